import CRdKafka
import GantryCore

extension GantryError {
    /// Maps a librdkafka error code to Gantry's error, keeping librdkafka's own text.
    init(kafka code: rd_kafka_resp_err_t, _ context: String, retriable: Bool? = nil) {
        let reason = String(cString: rd_kafka_err2str(code))
        let name = String(cString: rd_kafka_err2name(code))
        let gantryCode: GantryError.Code
        switch code {
        case RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR__RESOLVE,
            RD_KAFKA_RESP_ERR__SSL, RD_KAFKA_RESP_ERR__AUTHENTICATION, RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
            gantryCode = .connectionFailed
        case RD_KAFKA_RESP_ERR__TIMED_OUT, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
            gantryCode = .timeout
        case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
            gantryCode = .payloadTooLarge
        case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC, RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
            RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
            gantryCode = .notFound
        case RD_KAFKA_RESP_ERR__INVALID_ARG, RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
            gantryCode = .invalidArgument
        case RD_KAFKA_RESP_ERR__DESTROY, RD_KAFKA_RESP_ERR__FENCED:
            gantryCode = .closed
        case RD_KAFKA_RESP_ERR__PURGE_QUEUE, RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
            gantryCode = .cancelled
        default:
            gantryCode = .commandFailed
        }
        self.init(gantryCode, "\(context): \(reason) (\(name))", isRetriable: retriable)
    }

    /// Maps an `rd_kafka_error_t` and destroys it.
    init(consuming error: OpaquePointer, _ context: String) {
        let code = rd_kafka_error_code(error)
        let retriable = rd_kafka_error_is_retriable(error) != 0
        let detail = String(cString: rd_kafka_error_string(error))
        rd_kafka_error_destroy(error)
        self.init(kafka: code, "\(context) (\(detail))", retriable: retriable ? true : nil)
    }
}
