import Foundation
import MillraceCore
import MillraceImaging

/// One image stream: frame preparation (centre crop, area resize), the similarity filter, the
/// stream-batch pipeline and output upscaling, with counters.
public final class StreamSession {
    public let pipeline: StreamPipeline
    public var filter: SimilarityFilter?
    /// Output size for display (nil: the model's size).
    public var outputSize: (width: Int, height: Int)?
    public var bilinearOutput = false
    /// The last output, returned again for skipped frames.
    public private(set) var lastOutput: RGBImage?
    public private(set) var framesIn = 0, framesProcessed = 0, framesSkipped = 0
    /// What the outputs keep of their inputs and how much they flicker (docs/STREAMS.md).
    public private(set) var measures = StreamMeasures.Running()

    public init(pipeline: StreamPipeline, filter: SimilarityFilter?) {
        self.pipeline = pipeline
        self.filter = filter
    }

    /// Centre-crops `image` to a square and area-resizes it to the model's size, as a model-space
    /// frame [1, 3, S, S] (pixels in [−1, 1] times the norm scale).
    public func prepare(_ image: RGBImage) -> Tensor {
        // A one-image batch always converts.
        try! Tensor(images: [small(image)], scale: Float(pipeline.sampler.flow.normScale))
    }

    /// `image` centre-cropped to a square and area-resized to the model's size.
    func small(_ image: RGBImage) -> RGBImage {
        let size = pipeline.sampler.model.config.sampleSize
        let square = image.centerCropped(aspect: 1)
        return square.width == size && square.height == size ? square : square.resizedArea(width: size, height: size)
    }

    /// Runs one frame. Returns the output image and whether the frame was skipped (then the
    /// previous output is returned and no pipeline state changes).
    public func process(_ image: RGBImage) throws -> (image: RGBImage, skipped: Bool) {
        framesIn += 1
        if var f = filter, lastOutput != nil {
            let skip = f.shouldSkip(image)
            filter = f
            if skip, let last = lastOutput {
                framesSkipped += 1
                return (last, true)
            }
        } else if var f = filter {
            _ = f.shouldSkip(image)  // the first frame sets the comparison point
            filter = f
        }
        let input = small(image)
        let out = try pipeline.process(try! Tensor(images: [input], scale: Float(pipeline.sampler.flow.normScale)))
        framesProcessed += 1
        var picture = try RGBImage.batch(from: out, scale: Float(pipeline.sampler.flow.normScale))[0]
        measures.add(input: input.luma(), output: picture, slots: pipeline.slots)
        if let size = outputSize, size.width != picture.width || size.height != picture.height {
            picture = bilinearOutput ? picture.resizedBilinear(width: size.width, height: size.height)
                                     : picture.resizedNearest(width: size.width, height: size.height)
        }
        lastOutput = picture
        return (picture, false)
    }
}
