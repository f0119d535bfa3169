import MillraceFormats
import MillraceCore
import MillraceImaging
import MillracePipelines

// How the errors of the layers below become HTTP statuses: what the request asked for that
// cannot be done is the client's (4xx); a server file that cannot be used or a computation that
// failed is the server's (500). The body is always {"error": message}.

extension HTTPResponse {
    /// The response for an error thrown while serving a request.
    public static func failure(_ error: Error) -> HTTPResponse {
        .error(status(of: error), "\(error)")
    }

    /// The status for an error of any layer.
    public static func status(of error: Error) -> Int {
        switch error {
        case let e as ModelError:
            switch e {
            case .invalidArgument, .unsupported, .missingFile: return 400
            case .invalidModel, .invalidFile, .numerical, .io: return 500
            }
        case let e as ImageError:
            switch e {
            case .tooLarge: return 413
            case .unsupportedFormat: return 415
            case .corrupt, .emptyImage, .notAnImageBatch: return 400
            case .io: return 500
            }
        case let e as MultipartError: return e.status
        case let e as RequestError: return e.status
        case is SafetensorsError: return 400
        default: return 400  // RequestError, StreamError, ColorError: the request's parameters
        }
    }
}
