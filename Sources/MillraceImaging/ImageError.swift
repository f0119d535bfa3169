/// Why an image could not be decoded, loaded or written.
public enum ImageError: Error, CustomStringConvertible, Equatable {
    /// The bytes are neither PNG nor JPEG (judged by the magic bytes).
    case unsupportedFormat
    /// The decoder gave up; the payload is its message (damaged, truncated, or an unsupported
    /// variant such as a 12-bit JPEG).
    case corrupt(String)
    /// The header declares more than `limit` pixels; nothing was allocated for the pixels.
    case tooLarge(width: Int, height: Int, limit: Int)
    /// No bytes at all, or a header that declares zero width or height.
    case emptyImage
    /// A file could not be read or written; the payload names the file and the OS error.
    case io(String)
    /// A tensor that is not a batch [B, 3, H, W] of RGB pictures (for instance a latent-space
    /// model's output, which needs a decoder first).
    case notAnImageBatch(shape: [Int])

    public var description: String {
        switch self {
        case .unsupportedFormat:
            return "the data is not a PNG or JPEG image (unrecognised magic bytes); "
                + "convert it to PNG or JPEG first"
        case .corrupt(let message):
            return "cannot decode the image: \(message); the file is damaged, truncated or uses "
                + "an unsupported variant, so re-export it as an 8-bit PNG or a baseline JPEG"
        case .tooLarge(let width, let height, let limit):
            return "image is \(width)x\(height) = \(Self.megapixels(width * height)) megapixels, "
                + "over the limit of \(Self.megapixels(limit)) megapixels; resize it first "
                + "(or pass a larger maxPixels if you trust the file)"
        case .emptyImage:
            return "the image is empty (no bytes, or a header declaring zero width or height); "
                + "check that the file was written completely"
        case .io(let message):
            return "\(message); check the path, permissions and free disk space"
        case .notAnImageBatch(let shape):
            return "a tensor of shape \(shape) is not a batch of RGB pictures [B, 3, H, W]; a model with "
                + "other than 3 channels (a latent-space model) needs a decoder: save its output with --save-latents"
        }
    }

    /// `pixels` in megapixels with at most three decimals, trailing zeros dropped: "400",
    /// "16.004", "0.25".
    static func megapixels(_ pixels: Int) -> String {
        let thousandths = (pixels + 500) / 1000
        let whole = thousandths / 1000, frac = thousandths % 1000
        if frac == 0 { return "\(whole)" }
        var digits = String(frac)
        digits = String(repeating: "0", count: 3 - digits.count) + digits
        while digits.hasSuffix("0") { digits.removeLast() }
        return "\(whole).\(digits)"
    }
}
