import CRabbitMQ

/// Scratch memory for the C arguments (strings, tables, properties) of librabbitmq calls.
///
/// librabbitmq encodes its arguments into the outgoing frame before a call returns, so a pool
/// only has to live across the call that uses it; its deinit frees everything at once.
final class AMQPPool {
    private let pool: UnsafeMutablePointer<amqp_pool_t>

    init(pageSize: Int = 4096) {
        pool = .allocate(capacity: 1)
        init_amqp_pool(pool, pageSize)
    }

    deinit {
        // empty_amqp_pool frees every block the pool handed out; the struct itself is ours.
        empty_amqp_pool(pool)
        pool.deallocate()
    }

    /// Frees everything handed out so far while keeping the first page for reuse.
    func recycle() {
        recycle_amqp_pool(pool)
    }

    /// Pool-owned memory for `count` values of `T` (librabbitmq aligns pool blocks to 8 bytes).
    func allocate<T>(_ type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        guard let raw = amqp_pool_alloc(pool, MemoryLayout<T>.stride * count) else {
            fatalError("librabbitmq pool allocation of \(count) \(T.self) failed: out of memory")
        }
        return raw.bindMemory(to: T.self, capacity: count)
    }

    /// A pool-owned copy of the UTF-8 bytes of `text`.
    func bytes(_ text: String) -> amqp_bytes_t {
        bytes(text.utf8)
    }

    /// A pool-owned copy of `raw`.
    func bytes<C: Collection>(_ raw: C) -> amqp_bytes_t where C.Element == UInt8 {
        let count = raw.count
        guard count > 0 else { return amqp_empty_bytes }
        var output = amqp_bytes_t()
        amqp_pool_alloc_bytes(pool, count, &output)
        guard let destination = output.bytes else {
            fatalError("librabbitmq pool allocation of \(count) bytes failed: out of memory")
        }
        UnsafeMutableRawBufferPointer(start: destination, count: count).copyBytes(from: raw)
        return output
    }

    /// A pool-owned C table; keys are sorted so that equal tables encode to equal bytes.
    func table(_ table: [String: AMQPFieldValue]) -> amqp_table_t {
        guard !table.isEmpty else { return amqp_empty_table }
        let entries = allocate(amqp_table_entry_t.self, count: table.count)
        for (index, key) in table.keys.sorted().enumerated() {
            (entries + index).initialize(to: amqp_table_entry_t(key: bytes(key), value: field(table[key]!)))
        }
        return amqp_table_t(num_entries: Int32(table.count), entries: entries)
    }

    /// A pool-owned C field value.
    func field(_ value: AMQPFieldValue) -> amqp_field_value_t {
        var field = amqp_field_value_t()
        func kind(_ kind: amqp_field_value_kind_t) { field.kind = UInt8(kind.rawValue) }
        switch value {
        case .bool(let value): kind(AMQP_FIELD_KIND_BOOLEAN); field.value.boolean = value ? 1 : 0
        case .int8(let value): kind(AMQP_FIELD_KIND_I8); field.value.i8 = value
        case .uint8(let value): kind(AMQP_FIELD_KIND_U8); field.value.u8 = value
        case .int16(let value): kind(AMQP_FIELD_KIND_I16); field.value.i16 = value
        case .uint16(let value): kind(AMQP_FIELD_KIND_U16); field.value.u16 = value
        case .int32(let value): kind(AMQP_FIELD_KIND_I32); field.value.i32 = value
        case .uint32(let value): kind(AMQP_FIELD_KIND_U32); field.value.u32 = value
        case .int64(let value): kind(AMQP_FIELD_KIND_I64); field.value.i64 = value
        case .uint64(let value): kind(AMQP_FIELD_KIND_U64); field.value.u64 = value
        case .float(let value): kind(AMQP_FIELD_KIND_F32); field.value.f32 = value
        case .double(let value): kind(AMQP_FIELD_KIND_F64); field.value.f64 = value
        case .decimal(let scale, let value):
            kind(AMQP_FIELD_KIND_DECIMAL)
            field.value.decimal = amqp_decimal_t(decimals: scale, value: value)
        case .string(let value): kind(AMQP_FIELD_KIND_UTF8); field.value.bytes = bytes(value)
        case .bytes(let value): kind(AMQP_FIELD_KIND_BYTES); field.value.bytes = bytes(value)
        case .array(let values):
            kind(AMQP_FIELD_KIND_ARRAY)
            let entries = values.isEmpty ? nil : allocate(amqp_field_value_t.self, count: values.count)
            for (index, element) in values.enumerated() {
                (entries! + index).initialize(to: self.field(element))
            }
            field.value.array = amqp_array_t(num_entries: Int32(values.count), entries: entries)
        case .table(let value): kind(AMQP_FIELD_KIND_TABLE); field.value.table = table(value)
        case .timestamp(let value): kind(AMQP_FIELD_KIND_TIMESTAMP); field.value.u64 = value
        case .void: kind(AMQP_FIELD_KIND_VOID)
        }
        return field
    }

    /// Pool-owned C message properties.
    func properties(_ properties: AMQPProperties) -> amqp_basic_properties_t {
        var c = amqp_basic_properties_t()
        var flags: Int32 = 0
        func string(_ value: String?, _ flag: Int32, _ set: (amqp_bytes_t) -> Void) {
            guard let value else { return }
            flags |= flag
            set(bytes(value))
        }
        string(properties.contentType, AMQP_BASIC_CONTENT_TYPE_FLAG) { c.content_type = $0 }
        string(properties.contentEncoding, AMQP_BASIC_CONTENT_ENCODING_FLAG) { c.content_encoding = $0 }
        if !properties.headers.isEmpty {
            flags |= AMQP_BASIC_HEADERS_FLAG
            c.headers = table(properties.headers)
        }
        if let mode = properties.deliveryMode {
            flags |= AMQP_BASIC_DELIVERY_MODE_FLAG
            c.delivery_mode = mode.rawValue
        }
        if let priority = properties.priority {
            flags |= AMQP_BASIC_PRIORITY_FLAG
            c.priority = priority
        }
        string(properties.correlationID, AMQP_BASIC_CORRELATION_ID_FLAG) { c.correlation_id = $0 }
        string(properties.replyTo, AMQP_BASIC_REPLY_TO_FLAG) { c.reply_to = $0 }
        string(properties.expiration, AMQP_BASIC_EXPIRATION_FLAG) { c.expiration = $0 }
        string(properties.messageID, AMQP_BASIC_MESSAGE_ID_FLAG) { c.message_id = $0 }
        if let timestamp = properties.timestamp {
            flags |= AMQP_BASIC_TIMESTAMP_FLAG
            c.timestamp = timestamp
        }
        string(properties.type, AMQP_BASIC_TYPE_FLAG) { c.type = $0 }
        string(properties.userID, AMQP_BASIC_USER_ID_FLAG) { c.user_id = $0 }
        string(properties.appID, AMQP_BASIC_APP_ID_FLAG) { c.app_id = $0 }
        c._flags = amqp_flags_t(flags)
        return c
    }
}

// MARK: - C to Swift

/// A Swift copy of C bytes; the C memory may be released afterwards.
func swiftBytes(_ bytes: amqp_bytes_t) -> [UInt8] {
    guard bytes.len > 0, let start = bytes.bytes else { return [] }
    return Array(UnsafeRawBufferPointer(start: start, count: bytes.len))
}

/// A Swift string from C bytes (names, reply texts); invalid UTF-8 is repaired, never trapped on.
func swiftString(_ bytes: amqp_bytes_t) -> String {
    guard bytes.len > 0, let start = bytes.bytes else { return "" }
    return String(decoding: UnsafeRawBufferPointer(start: start, count: bytes.len), as: UTF8.self)
}

extension AMQPFieldValue {
    /// Copies a C field value (recursively) into Swift.
    init(_ field: amqp_field_value_t) {
        switch field.kind {
        case UInt8(ascii: "t"): self = .bool(field.value.boolean != 0)
        case UInt8(ascii: "b"): self = .int8(field.value.i8)
        case UInt8(ascii: "B"): self = .uint8(field.value.u8)
        case UInt8(ascii: "s"): self = .int16(field.value.i16)
        case UInt8(ascii: "u"): self = .uint16(field.value.u16)
        case UInt8(ascii: "I"): self = .int32(field.value.i32)
        case UInt8(ascii: "i"): self = .uint32(field.value.u32)
        case UInt8(ascii: "l"): self = .int64(field.value.i64)
        case UInt8(ascii: "L"): self = .uint64(field.value.u64)
        case UInt8(ascii: "f"): self = .float(field.value.f32)
        case UInt8(ascii: "d"): self = .double(field.value.f64)
        case UInt8(ascii: "D"): self = .decimal(scale: field.value.decimal.decimals, value: field.value.decimal.value)
        case UInt8(ascii: "S"):
            let raw = swiftBytes(field.value.bytes)
            self = String(validating: raw, as: UTF8.self).map(AMQPFieldValue.string) ?? .bytes(raw)
        case UInt8(ascii: "x"): self = .bytes(swiftBytes(field.value.bytes))
        case UInt8(ascii: "A"):
            let array = field.value.array
            var values: [AMQPFieldValue] = []
            values.reserveCapacity(Int(array.num_entries))
            for index in 0..<Int(array.num_entries) {
                values.append(AMQPFieldValue(array.entries[index]))
            }
            self = .array(values)
        case UInt8(ascii: "F"): self = .table(swiftTable(field.value.table))
        case UInt8(ascii: "T"): self = .timestamp(field.value.u64)
        default: self = .void
        }
    }
}

/// Copies a C table (recursively) into Swift.
func swiftTable(_ table: amqp_table_t) -> [String: AMQPFieldValue] {
    guard table.num_entries > 0, let entries = table.entries else { return [:] }
    var result: [String: AMQPFieldValue] = [:]
    result.reserveCapacity(Int(table.num_entries))
    for index in 0..<Int(table.num_entries) {
        result[swiftString(entries[index].key)] = AMQPFieldValue(entries[index].value)
    }
    return result
}

extension AMQPProperties {
    /// Copies C message properties into Swift.
    init(_ c: amqp_basic_properties_t) {
        let flags = Int32(bitPattern: c._flags)
        func string(_ flag: Int32, _ value: amqp_bytes_t) -> String? {
            flags & flag != 0 ? swiftString(value) : nil
        }
        self.init()
        contentType = string(AMQP_BASIC_CONTENT_TYPE_FLAG, c.content_type)
        contentEncoding = string(AMQP_BASIC_CONTENT_ENCODING_FLAG, c.content_encoding)
        headers = flags & AMQP_BASIC_HEADERS_FLAG != 0 ? swiftTable(c.headers) : [:]
        deliveryMode = flags & AMQP_BASIC_DELIVERY_MODE_FLAG != 0 ? DeliveryMode(rawValue: c.delivery_mode) : nil
        priority = flags & AMQP_BASIC_PRIORITY_FLAG != 0 ? c.priority : nil
        correlationID = string(AMQP_BASIC_CORRELATION_ID_FLAG, c.correlation_id)
        replyTo = string(AMQP_BASIC_REPLY_TO_FLAG, c.reply_to)
        expiration = string(AMQP_BASIC_EXPIRATION_FLAG, c.expiration)
        messageID = string(AMQP_BASIC_MESSAGE_ID_FLAG, c.message_id)
        timestamp = flags & AMQP_BASIC_TIMESTAMP_FLAG != 0 ? c.timestamp : nil
        type = string(AMQP_BASIC_TYPE_FLAG, c.type)
        userID = string(AMQP_BASIC_USER_ID_FLAG, c.user_id)
        appID = string(AMQP_BASIC_APP_ID_FLAG, c.app_id)
    }
}
