//! OTLP trace export bodies, written by hand: an `ExportTraceServiceRequest`
//! protobuf (`opentelemetry/proto/collector/trace/v1/trace_service.proto` and the
//! `trace/v1`, `common/v1`, `resource/v1` messages it holds), the body of an
//! OTLP/HTTP `POST /v1/traces` with `content-type: application/x-protobuf`.
//!
//! Why not the OpenTelemetry SDK and its exporter: measured in `bench/trace.sh`
//! (docs/benchmarks.md), making spans through the SDK (ids, owned attribute
//! strings, one `SpanData` per span moved through the processor, the batch and the
//! exporter's own message types) cost 28 % of req/s at c=64. Here a request's spans
//! are one record (src/telemetry/trace.rs) and are encoded straight from it into
//! one buffer per export, attributes written as they are read, no message objects
//! in between.
//!
//! The field numbers are the `.proto` files' (OTLP 1.x, stable). The tests decode
//! what this writes with `opentelemetry-proto`'s types, generated from those same
//! files (the messages the Collector, Tempo and Jaeger decode), and compare field
//! by field.

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

/// `Span.SpanKind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Internal = 1,
    Server = 2,
    Client = 3,
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn tag(buf: &mut Vec<u8>, field: u32, wire: u8) {
    varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

/// A length-delimited field made of `parts` one after the other.
fn bytes(buf: &mut Vec<u8>, field: u32, parts: &[&[u8]]) {
    tag(buf, field, LEN);
    varint(buf, parts.iter().map(|p| p.len()).sum::<usize>() as u64);
    for p in parts {
        buf.extend_from_slice(p);
    }
}

fn fixed64(buf: &mut Vec<u8>, field: u32, v: u64) {
    tag(buf, field, FIXED64);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// An attribute's value (`AnyValue`).
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
}

/// A `KeyValue` as field `field` of the message in `buf` (span attributes are
/// field 9, resource and scope attributes field 1 and 3).
pub fn attribute(buf: &mut Vec<u8>, field: u32, key: &str, value: Value<'_>) {
    // AnyValue: string_value = 1, bool_value = 2, int_value = 3.
    let any_len = match value {
        Value::Str(s) => 1 + varint_len(s.len() as u64) + s.len(),
        Value::Bool(_) => 2,
        Value::Int(i) => 1 + varint_len(i as u64),
    };
    // KeyValue: key = 1, value = 2.
    let kv_len =
        1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(any_len as u64) + any_len;
    tag(buf, field, LEN);
    varint(buf, kv_len as u64);
    bytes(buf, 1, &[key.as_bytes()]);
    tag(buf, 2, LEN);
    varint(buf, any_len as u64);
    match value {
        Value::Str(s) => bytes(buf, 1, &[s.as_bytes()]),
        Value::Bool(b) => {
            tag(buf, 2, VARINT);
            buf.push(u8::from(b));
        }
        Value::Int(i) => {
            tag(buf, 3, VARINT);
            varint(buf, i as u64);
        }
    }
}

/// The fixed part of a span.
pub struct Head<'a> {
    pub trace_id: &'a [u8; 16],
    pub span_id: [u8; 8],
    /// All zeros: a root span.
    pub parent: [u8; 8],
    /// The name, as parts written one after the other.
    pub name: &'a [&'a str],
    pub kind: Kind,
    /// Unix nanoseconds.
    pub start: u64,
    pub end: u64,
}

/// A span being written: attributes go in with [`Span::attr`], then
/// [`Span::end`] puts it in its export.
pub struct Span<'b> {
    buf: &'b mut Vec<u8>,
}

impl<'b> Span<'b> {
    /// Start a span in `scratch` (cleared).
    pub fn begin(scratch: &'b mut Vec<u8>, h: &Head<'_>) -> Self {
        scratch.clear();
        // Span: trace_id = 1, span_id = 2, parent_span_id = 4, name = 5, kind = 6,
        // start_time_unix_nano = 7, end_time_unix_nano = 8.
        bytes(scratch, 1, &[h.trace_id]);
        bytes(scratch, 2, &[&h.span_id]);
        if h.parent != [0; 8] {
            bytes(scratch, 4, &[&h.parent]);
        }
        tag(scratch, 5, LEN);
        varint(
            scratch,
            h.name.iter().map(|p| p.len()).sum::<usize>() as u64,
        );
        for p in h.name {
            scratch.extend_from_slice(p.as_bytes());
        }
        tag(scratch, 6, VARINT);
        varint(scratch, h.kind as u64);
        fixed64(scratch, 7, h.start);
        fixed64(scratch, 8, h.end.max(h.start));
        Self { buf: scratch }
    }

    /// An attribute (`attributes = 9`).
    pub fn attr(&mut self, key: &str, value: Value<'_>) -> &mut Self {
        attribute(self.buf, 9, key, value);
        self
    }

    /// Status ERROR with `message` (`status = 15`; Status: message = 2, code = 3).
    pub fn error(&mut self, message: &str) -> &mut Self {
        let len = 1 + varint_len(message.len() as u64) + message.len() + 2;
        tag(self.buf, 15, LEN);
        varint(self.buf, len as u64);
        bytes(self.buf, 2, &[message.as_bytes()]);
        tag(self.buf, 3, VARINT);
        self.buf.push(2);
        self
    }

    /// The span as `spans = 2` of the scope's spans in `out`.
    pub fn end(&mut self, out: &mut Vec<u8>) {
        bytes(out, 2, &[self.buf]);
    }
}

/// The request body around `spans` (the encoded `ScopeSpans.spans` fields):
/// one `ResourceSpans` with `resource` (its encoded attributes) and one
/// `ScopeSpans` of `scope` (an encoded `InstrumentationScope`).
pub fn request(resource: &[u8], scope: &[u8], spans: &[u8]) -> Vec<u8> {
    // ScopeSpans: scope = 1, spans = 2 (already tagged in `spans`).
    let scope_spans = 1 + varint_len(scope.len() as u64) + scope.len() + spans.len();
    // ResourceSpans: resource = 1, scope_spans = 2.
    let resource_spans = 1
        + varint_len(resource.len() as u64)
        + resource.len()
        + 1
        + varint_len(scope_spans as u64)
        + scope_spans;
    let mut out = Vec::with_capacity(resource_spans + 8);
    // ExportTraceServiceRequest: resource_spans = 1.
    tag(&mut out, 1, LEN);
    varint(&mut out, resource_spans as u64);
    bytes(&mut out, 1, &[resource]);
    tag(&mut out, 2, LEN);
    varint(&mut out, scope_spans as u64);
    bytes(&mut out, 1, &[scope]);
    out.extend_from_slice(spans);
    out
}

/// An encoded `Resource` (attributes = 1) of `service.name` and `service.version`.
pub fn resource(service: &str, version: &str) -> Vec<u8> {
    let mut r = Vec::new();
    attribute(&mut r, 1, "service.name", Value::Str(service));
    attribute(&mut r, 1, "service.version", Value::Str(version));
    r
}

/// An encoded `InstrumentationScope` (name = 1, version = 2).
pub fn scope(name: &str, version: &str) -> Vec<u8> {
    let mut s = Vec::new();
    bytes(&mut s, 1, &[name.as_bytes()]);
    bytes(&mut s, 2, &[version.as_bytes()]);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;

    #[test]
    fn varint_lengths_match_what_is_written() {
        for v in [0, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            varint(&mut b, v);
            assert_eq!(b.len(), varint_len(v), "{v}");
        }
    }

    /// What the encoder writes is what the OTLP `.proto` files' own types read.
    #[test]
    fn the_protocols_own_types_read_it_back() {
        let trace_id = [7u8; 16];
        let mut scratch = Vec::new();
        let mut spans = Vec::new();
        let long = "x".repeat(300);
        let mut s = Span::begin(
            &mut scratch,
            &Head {
                trace_id: &trace_id,
                span_id: [1; 8],
                parent: [0; 8],
                name: &["chat", " ", "m"],
                kind: Kind::Server,
                start: 1_700_000_000_000_000_000,
                end: 1_700_000_000_500_000_000,
            },
        );
        s.attr("gen_ai.request.model", Value::Str("m"))
            .attr("llmvisor.stream", Value::Bool(true))
            .attr("server.port", Value::Int(8080))
            .attr("negative", Value::Int(-3))
            .attr("long", Value::Str(&long))
            .error("upstream_error");
        s.end(&mut spans);
        Span::begin(
            &mut scratch,
            &Head {
                trace_id: &trace_id,
                span_id: [2; 8],
                parent: [1; 8],
                name: &["queue wait"],
                kind: Kind::Internal,
                start: 5,
                end: 3,
            },
        )
        .end(&mut spans);
        let body = request(
            &resource("gpu-box", "1.2.3"),
            &scope("llmvisor", "1.2.3"),
            &spans,
        );

        let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        assert_eq!(req.resource_spans.len(), 1);
        let rs = &req.resource_spans[0];
        let res: Vec<_> = rs.resource.as_ref().unwrap().attributes.iter().collect();
        assert_eq!(res[0].key, "service.name");
        assert_eq!(
            res[0].value.as_ref().unwrap().value,
            Some(Any::StringValue("gpu-box".into()))
        );
        assert_eq!(res[1].key, "service.version");
        let ss = &rs.scope_spans[0];
        assert_eq!(ss.scope.as_ref().unwrap().name, "llmvisor");
        assert_eq!(ss.scope.as_ref().unwrap().version, "1.2.3");
        assert_eq!(ss.spans.len(), 2);
        let a = &ss.spans[0];
        assert_eq!(a.trace_id, trace_id);
        assert_eq!(a.span_id, [1; 8]);
        assert!(a.parent_span_id.is_empty());
        assert_eq!(a.name, "chat m");
        assert_eq!(a.kind, 2);
        assert_eq!(a.start_time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(a.end_time_unix_nano, 1_700_000_000_500_000_000);
        let vals: Vec<_> = a
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), kv.value.as_ref().unwrap().value.clone()))
            .collect();
        assert_eq!(
            vals,
            [
                ("gen_ai.request.model", Some(Any::StringValue("m".into()))),
                ("llmvisor.stream", Some(Any::BoolValue(true))),
                ("server.port", Some(Any::IntValue(8080))),
                ("negative", Some(Any::IntValue(-3))),
                ("long", Some(Any::StringValue(long.clone()))),
            ]
        );
        let status = a.status.as_ref().unwrap();
        assert_eq!(status.code, 2);
        assert_eq!(status.message, "upstream_error");
        let b = &ss.spans[1];
        assert_eq!(b.parent_span_id, [1; 8]);
        assert_eq!(b.kind, 1);
        assert_eq!(b.name, "queue wait");
        // An end before the start is clamped to it.
        assert_eq!((b.start_time_unix_nano, b.end_time_unix_nano), (5, 5));
        assert!(b.status.is_none() && b.attributes.is_empty());
    }
}
