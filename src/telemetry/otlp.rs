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

#[inline]
fn varint(buf: &mut Vec<u8>, v: u64) {
    // Nearly every length and small number fits in one byte.
    if v < 0x80 {
        buf.push(v as u8);
    } else {
        varint_long(buf, v);
    }
}

fn varint_long(buf: &mut Vec<u8>, v: u64) {
    let mut a = [0u8; 10];
    let n = put_varint(&mut a, v);
    buf.extend_from_slice(&a[..n]);
}

pub fn varint_len(v: u64) -> usize {
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

/// An attribute's value (`AnyValue`).
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Str(&'a str),
    /// A string's bytes the caller has checked are UTF-8 (ASCII: a request id
    /// checked with `is_ascii`), written as a string.
    Utf8(&'a [u8]),
    Bool(bool),
    Int(i64),
}

/// An attribute key, encoded once: `KeyValue.key` (field 1: tag, length, the
/// name) and the tag of `KeyValue.value` (field 2), so that writing an attribute
/// copies one slice for its key instead of a tag, a length and the name.
pub struct Key {
    enc: [u8; Key::MAX + 3],
    len: u8,
}

impl Key {
    /// The longest name a key may have: with its tag, length and the value's tag,
    /// an encoded key fits 64 bytes (and its length one byte). Every key is ours.
    const MAX: usize = 61;

    /// `name`, at most [`Key::MAX`] bytes (a `const` key longer than that does
    /// not compile).
    pub const fn new(name: &str) -> Self {
        let b = name.as_bytes();
        assert!(
            b.len() <= Self::MAX,
            "an attribute key of more than 61 bytes"
        );
        let mut enc = [0u8; Self::MAX + 3];
        // KeyValue: key = 1 (LEN).
        enc[0] = (1 << 3) | LEN;
        enc[1] = b.len() as u8;
        let mut i = 0;
        while i < b.len() {
            enc[2 + i] = b[i];
            i += 1;
        }
        // KeyValue: value = 2 (LEN), its length follows.
        enc[2 + b.len()] = (2 << 3) | LEN;
        Self {
            enc,
            len: (b.len() + 3) as u8,
        }
    }
}

/// A `KeyValue` as field `field` of the message in `buf` (span attributes are
/// field 9, resource attributes field 1; a field under 16, so its tag is one
/// byte).
fn key_value(buf: &mut Vec<u8>, field: u32, key: &Key, value: Value<'_>) {
    debug_assert!(field < 16);
    // AnyValue: string_value = 1, bool_value = 2, int_value = 3. Everything up to
    // a string's bytes (the tag, the KeyValue's length, the key, the AnyValue's
    // length, the value's tag and its length or number) is put together in one
    // array and copied into `buf` at once: a copy per attribute (two with a
    // string) rather than a capacity check and a push per field.
    let (vhead, vhead_len, tail) = value_head(value);
    let any_len = vhead_len + tail.len();
    let kv_len = usize::from(key.len) + varint_len(any_len as u64) + any_len;
    let mut a = [0u8; 1 + 10 + Key::MAX + 3 + 10 + 11];
    a[0] = ((field << 3) as u8) | LEN;
    let mut n = 1 + put_varint(&mut a[1..11], kv_len as u64);
    // The whole key array (a copy of a size known when compiling), then on from
    // where the key ends.
    a[n..n + Key::MAX + 3].copy_from_slice(&key.enc);
    n += usize::from(key.len);
    n += put_varint(&mut a[n..n + 10], any_len as u64);
    a[n..n + 11].copy_from_slice(&vhead);
    n += vhead_len;
    // The whole array and cut back (moves of a size known when compiling, not
    // a call to memcpy); a string's bytes after it.
    let at = buf.len();
    buf.extend_from_slice(&a);
    buf.truncate(at + n);
    if !tail.is_empty() {
        buf.extend_from_slice(tail);
    }
}

/// [`value_head`] of a string's bytes.
fn string_head(mut head: [u8; 11], s: &[u8]) -> ([u8; 11], usize, &[u8]) {
    head[0] = (1 << 3) | LEN;
    let n = 1 + put_varint(&mut head[1..], s.len() as u64);
    (head, n, s)
}

/// An `AnyValue`'s first bytes (its tag, and a string's length or the number),
/// how many of them there are, and a string's bytes.
fn value_head(value: Value<'_>) -> ([u8; 11], usize, &[u8]) {
    let mut head = [0u8; 11];
    match value {
        Value::Str(s) => string_head(head, s.as_bytes()),
        Value::Utf8(s) => string_head(head, s),
        Value::Bool(b) => {
            head[0] = (2 << 3) | VARINT;
            head[1] = u8::from(b);
            (head, 2, &[])
        }
        Value::Int(i) => {
            head[0] = (3 << 3) | VARINT;
            let n = 1 + put_varint(&mut head[1..], i as u64);
            (head, n, &[])
        }
    }
}

/// `v` as a varint at the start of `out` (10 bytes hold any); its length.
pub fn put_varint(out: &mut [u8], mut v: u64) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        out[i] = (v as u8) | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

/// A span attribute (`Span.attributes = 9`) appended to `buf`: for the
/// pre-encoded parts of a span ([`Span::raw`]).
pub fn attribute(buf: &mut Vec<u8>, key: &Key, value: Value<'_>) {
    key_value(buf, 9, key, value);
}

/// A span's name (`name = 5`, made of `parts` one after the other) and kind
/// (`kind = 6`) appended to `buf`: for the pre-encoded parts of a span
/// ([`Span::raw`]).
pub fn name_and_kind(buf: &mut Vec<u8>, name: &[&str], kind: Kind) {
    tag(buf, 5, LEN);
    varint(buf, name.iter().map(|p| p.len()).sum::<usize>() as u64);
    for p in name {
        buf.extend_from_slice(p.as_bytes());
    }
    tag(buf, 6, VARINT);
    varint(buf, kind as u64);
}

/// The ids and times of a span.
pub struct Head<'a> {
    pub trace_id: &'a [u8; 16],
    pub span_id: [u8; 8],
    /// All zeros: a root span.
    pub parent: [u8; 8],
    /// Unix nanoseconds.
    pub start: u64,
    pub end: u64,
}

/// A span being written: its name and kind (pre-encoded, [`name_and_kind`]),
/// attributes and status go in with [`Span::raw`], [`Span::attr`] and
/// [`Span::error`] (protobuf
/// readers take a message's fields in any order), then [`Span::end`] writes its
/// length in front of it.
///
/// It is written straight into the export (as `ScopeSpans.spans = 2`) behind a
/// two-byte length, the size of nearly every span's (128 to 16,383 bytes), or a
/// one-byte length for one begun with [`Span::begin_short`]; a span whose length
/// needs fewer or more bytes than it was given is moved when it ends.
pub struct Span<'b> {
    buf: &'b mut Vec<u8>,
    /// Where its length goes.
    at: usize,
    /// The bytes kept for its length (1 or 2).
    width: usize,
}

impl<'b> Span<'b> {
    /// Start a span at the end of `out`.
    pub fn begin(out: &'b mut Vec<u8>, h: &Head<'_>) -> Self {
        Self::begin_sized(out, h, 2)
    }

    /// Start a span known to stay under 128 bytes (no attributes of its own, a
    /// short name): its length takes one byte and nothing moves when it ends.
    pub fn begin_short(out: &'b mut Vec<u8>, h: &Head<'_>) -> Self {
        Self::begin_sized(out, h, 1)
    }

    /// A span whose length is first given `width` bytes (1 or 2).
    fn begin_sized(out: &'b mut Vec<u8>, h: &Head<'_>, width: usize) -> Self {
        // Its tag, its length's place, the ids and the times in one array,
        // copied in at once. Span: trace_id = 1, span_id = 2, parent_span_id = 4,
        // start_time_unix_nano = 7, end_time_unix_nano = 8.
        let mut a = [0u8; 64];
        a[0] = (2 << 3) | LEN;
        let at = out.len() + 1;
        let mut n = 1 + width;
        a[n] = (1 << 3) | LEN;
        a[n + 1] = 16;
        a[n + 2..n + 18].copy_from_slice(h.trace_id);
        a[n + 18] = (2 << 3) | LEN;
        a[n + 19] = 8;
        a[n + 20..n + 28].copy_from_slice(&h.span_id);
        n += 28;
        if h.parent != [0; 8] {
            a[n] = (4 << 3) | LEN;
            a[n + 1] = 8;
            a[n + 2..n + 10].copy_from_slice(&h.parent);
            n += 10;
        }
        a[n] = (7 << 3) | FIXED64;
        a[n + 1..n + 9].copy_from_slice(&h.start.to_le_bytes());
        a[n + 9] = (8 << 3) | FIXED64;
        a[n + 10..n + 18].copy_from_slice(&h.end.max(h.start).to_le_bytes());
        n += 18;
        out.reserve(a.len() + 128);
        let whole = out.len();
        out.extend_from_slice(&a);
        out.truncate(whole + n);
        Self {
            buf: out,
            at,
            width,
        }
    }

    /// The length of the buffer it is written into, so far.
    pub fn written(&self) -> usize {
        self.buf.len()
    }

    /// Fields encoded beforehand ([`name_and_kind`], [`attribute`]).
    pub fn raw(&mut self, encoded: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(encoded);
        self
    }

    /// An attribute (`attributes = 9`).
    pub fn attr(&mut self, key: &Key, value: Value<'_>) -> &mut Self {
        key_value(self.buf, 9, key, value);
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

    /// Where the span's fields begin in the buffer (until [`Span::end`]).
    pub fn fields_at(&self) -> usize {
        self.at + self.width
    }

    /// The span is complete: its length goes in front of it. Returns where its
    /// fields begin now (they move when the length takes more or fewer bytes
    /// than it was given).
    pub fn end(&mut self) -> usize {
        let (at, width) = (self.at, self.width);
        let len = self.buf.len() - at - width;
        let mut v = [0u8; 10];
        let n = put_varint(&mut v, len as u64);
        if n < width {
            self.buf.copy_within(at + width.., at + n);
            self.buf.truncate(self.buf.len() - (width - n));
        } else if n > width {
            let old = self.buf.len();
            self.buf.resize(old + (n - width), 0);
            self.buf.copy_within(at + width..old, at + n);
        }
        self.buf[at..at + n].copy_from_slice(&v[..n]);
        at + n
    }
}

/// Where a span's ids and times are among its fields (from where they begin,
/// [`Span::end`]): as [`Span::begin`] writes them, with or without a parent.
pub mod at {
    /// `trace_id` (16 bytes).
    pub const TRACE: usize = 2;
    /// `span_id` (8 bytes).
    pub const SPAN: usize = 20;
    /// `parent_span_id` (8 bytes), when there is one.
    pub const PARENT: usize = 30;
    /// `start_time_unix_nano` and `end_time_unix_nano` (8 bytes each, little
    /// endian) with no parent; [`PARENTED`] more with one.
    pub const START: usize = 29;
    pub const END: usize = 38;
    pub const PARENTED: usize = 10;
}

/// The room [`seal`] needs at the front of an export's buffer for the message
/// around its spans, with `resource` and `scope` ([`request`]'s).
pub fn envelope_room(resource: &[u8], scope: &[u8]) -> usize {
    // Two tags and two lengths of up to 5 bytes (an export under 4 GiB), and the
    // resource and scope fields whole.
    2 * (1 + 5)
        + (1 + varint_len(resource.len() as u64) + resource.len())
        + (1 + varint_len(scope.len() as u64) + scope.len())
}

/// Write the message around the spans in `buf[room..]` (the encoded
/// `ScopeSpans.spans` fields) into the `room` bytes before them, ending where
/// they begin: one `ResourceSpans` with `resource` (its encoded attributes) and
/// one `ScopeSpans` of `scope` (an encoded `InstrumentationScope`). Returns
/// where the request body starts in `buf`: the spans are never copied.
pub fn seal(buf: &mut [u8], room: usize, resource: &[u8], scope: &[u8]) -> usize {
    let spans = buf.len() - room;
    // ScopeSpans: scope = 1, spans = 2 (already tagged in `spans`).
    let scope_spans = 1 + varint_len(scope.len() as u64) + scope.len() + spans;
    // ResourceSpans: resource = 1, scope_spans = 2.
    let resource_spans = 1
        + varint_len(resource.len() as u64)
        + resource.len()
        + 1
        + varint_len(scope_spans as u64)
        + scope_spans;
    let mut head = Vec::with_capacity(room);
    // ExportTraceServiceRequest: resource_spans = 1.
    tag(&mut head, 1, LEN);
    varint(&mut head, resource_spans as u64);
    bytes(&mut head, 1, &[resource]);
    tag(&mut head, 2, LEN);
    varint(&mut head, scope_spans as u64);
    bytes(&mut head, 1, &[scope]);
    let start = room - head.len();
    buf[start..room].copy_from_slice(&head);
    start
}

/// The request body around `spans` (the encoded `ScopeSpans.spans` fields),
/// copied: [`seal`] without the room before them, for tests.
#[cfg(test)]
pub fn request(resource: &[u8], scope: &[u8], spans: &[u8]) -> Vec<u8> {
    let room = envelope_room(resource, scope);
    let mut buf = vec![0; room];
    buf.extend_from_slice(spans);
    let start = seal(&mut buf, room, resource, scope);
    buf.drain(..start);
    buf
}

/// An encoded `Resource` (attributes = 1) of `service.name` and `service.version`.
pub fn resource(service: &str, version: &str) -> Vec<u8> {
    let mut r = Vec::new();
    key_value(&mut r, 1, &Key::new("service.name"), Value::Str(service));
    key_value(&mut r, 1, &Key::new("service.version"), Value::Str(version));
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
            let mut a = [0u8; 10];
            let n = put_varint(&mut a, v);
            assert_eq!(&a[..n], &b[..], "{v}");
        }
    }

    #[test]
    #[should_panic(expected = "more than 61 bytes")]
    fn a_key_longer_than_61_bytes_is_refused() {
        let _ = Key::new(&"k".repeat(62));
    }

    /// `at` names where `Span::begin` puts a span's ids and times, with a
    /// parent and without, whichever length it was given.
    #[test]
    fn at_names_where_begin_puts_ids_and_times() {
        let trace_id = [3u8; 16];
        for parent in [[0u8; 8], [6u8; 8]] {
            for short in [false, true] {
                let h = Head {
                    trace_id: &trace_id,
                    span_id: [5; 8],
                    parent,
                    start: 0x0102_0304_0506_0708,
                    end: 0x1112_1314_1516_1718,
                };
                let mut buf = b"x".to_vec();
                let mut s = if short {
                    Span::begin_short(&mut buf, &h)
                } else {
                    Span::begin(&mut buf, &h)
                };
                s.raw(b"\x2a\x01t");
                let f = s.end();
                let more = if parent == [0; 8] {
                    0
                } else {
                    assert_eq!(buf[f + at::PARENT..][..8], parent);
                    at::PARENTED
                };
                assert_eq!(buf[f + at::TRACE..][..16], trace_id);
                assert_eq!(buf[f + at::SPAN..][..8], [5; 8]);
                assert_eq!(buf[f + at::START + more..][..8], h.start.to_le_bytes());
                assert_eq!(buf[f + at::END + more..][..8], h.end.to_le_bytes());
            }
        }
    }

    /// Attributes and spans whose lengths are at and around where a length
    /// takes one more byte (an attribute's 128 bytes; a span's 128 and 16,384,
    /// begun short or not) read back whole with the `.proto` files' own types.
    #[test]
    fn lengths_at_each_boundary_are_read_back() {
        let trace_id = [9u8; 16];
        let head = Head {
            trace_id: &trace_id,
            span_id: [1; 8],
            parent: [0; 8],
            start: 1,
            end: 2,
        };
        let key = Key::new("k");
        let mut lens: Vec<usize> = (90..140).collect();
        lens.extend(16_300..16_400);
        let mut spans = Vec::new();
        let mut want = Vec::new();
        for (i, n) in lens.iter().enumerate() {
            let v = "v".repeat(*n);
            let mut s = if i % 2 == 0 {
                Span::begin(&mut spans, &head)
            } else {
                Span::begin_short(&mut spans, &head)
            };
            s.attr(&key, Value::Str(&v)).end();
            want.push(v);
        }
        let body = request(&resource("s", "1"), &scope("l", "1"), &spans);
        let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        let got: Vec<_> = req.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| {
                assert_eq!(s.attributes.len(), 1);
                match s.attributes[0].value.as_ref().unwrap().value.clone() {
                    Some(Any::StringValue(v)) => v,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        assert_eq!(got, want);
    }

    /// What the encoder writes is what the OTLP `.proto` files' own types read.
    #[test]
    fn the_protocols_own_types_read_it_back() {
        let trace_id = [7u8; 16];
        let mut spans = Vec::new();
        let long = "x".repeat(300);
        let longest = "k".repeat(61);
        // A span's head: its id, its parent's (0: none), its times.
        let at = |id: u8, parent: u8, start: u64, end: u64| Head {
            trace_id: &trace_id,
            span_id: [id; 8],
            parent: [parent; 8],
            start,
            end,
        };
        // Its length takes two bytes, as it was given (300-byte attribute).
        let mut s = Span::begin(
            &mut spans,
            &at(1, 0, 1_700_000_000_000_000_000, 1_700_000_000_500_000_000),
        );
        let mut named = Vec::new();
        name_and_kind(&mut named, &["chat", " ", "m"], Kind::Server);
        s.raw(&named)
            .attr(&Key::new("gen_ai.request.model"), Value::Str("m"))
            .attr(&Key::new("llmvisor.request_id"), Value::Utf8(b"req-1"))
            .attr(&Key::new("llmvisor.stream"), Value::Bool(true))
            .attr(&Key::new("server.port"), Value::Int(8080))
            .attr(&Key::new("negative"), Value::Int(-3))
            .attr(&Key::new("long"), Value::Str(&long))
            .attr(&Key::new(&longest), Value::Int(1))
            .error("upstream_error");
        s.end();
        // The same fields encoded beforehand and copied in.
        let mut block = Vec::new();
        name_and_kind(&mut block, &["queue wait"], Kind::Internal);
        attribute(&mut block, &Key::new("llmvisor.model"), Value::Str("m"));
        // Under 128 bytes: moved back by a byte when it ends.
        Span::begin(&mut spans, &at(2, 1, 5, 3)).raw(&block).end();
        // Begun short and short: nothing moves; begun short and over 127 bytes:
        // moved on by a byte.
        Span::begin_short(&mut spans, &at(4, 1, 9, 10))
            .raw(&block)
            .end();
        Span::begin_short(&mut spans, &at(5, 0, 11, 12))
            .attr(&Key::new("long"), Value::Str(&long))
            .end();
        // Over 16,383 bytes (a captured prompt): moved on by a byte.
        let prompt = "p".repeat(20_000);
        Span::begin(&mut spans, &at(3, 1, 7, 8))
            .attr(&Key::new("gen_ai.input.messages"), Value::Str(&prompt))
            .end();
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
        assert_eq!(ss.spans.len(), 5);
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
                (
                    "llmvisor.request_id",
                    Some(Any::StringValue("req-1".into()))
                ),
                ("llmvisor.stream", Some(Any::BoolValue(true))),
                ("server.port", Some(Any::IntValue(8080))),
                ("negative", Some(Any::IntValue(-3))),
                ("long", Some(Any::StringValue(long.clone()))),
                (longest.as_str(), Some(Any::IntValue(1))),
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
        assert!(b.status.is_none());
        assert_eq!(b.attributes.len(), 1);
        assert_eq!(b.attributes[0].key, "llmvisor.model");
        assert_eq!(
            b.attributes[0].value.as_ref().unwrap().value,
            Some(Any::StringValue("m".into()))
        );
        let short = &ss.spans[2];
        assert_eq!(
            (short.span_id.as_slice(), short.name.as_str()),
            (&[4; 8][..], "queue wait")
        );
        assert_eq!(
            (short.start_time_unix_nano, short.end_time_unix_nano),
            (9, 10)
        );
        let not_short = &ss.spans[3];
        assert_eq!(not_short.span_id, [5; 8]);
        assert!(not_short.parent_span_id.is_empty());
        assert_eq!(
            not_short.attributes[0].value.as_ref().unwrap().value,
            Some(Any::StringValue(long.clone()))
        );
        let c = &ss.spans[4];
        assert_eq!(
            (c.span_id.as_slice(), c.parent_span_id.as_slice()),
            (&[3; 8][..], &[1; 8][..])
        );
        assert_eq!((c.start_time_unix_nano, c.end_time_unix_nano), (7, 8));
        assert_eq!(
            c.attributes[0].value.as_ref().unwrap().value,
            Some(Any::StringValue(prompt))
        );
    }
}
