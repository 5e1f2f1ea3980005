//! Proto3 JSON written straight from a message's wire bytes, guided by the
//! descriptor pool (prost-reflect's descriptors), without building a
//! `DynamicMessage`.
//!
//! Why hand-written: prost-reflect's serializer needs a `DynamicMessage`, and
//! decoding Envoy's bootstrap into one (every `Any` decoded again into
//! another) and freeing it took about 200 µs per build, four times the
//! sidecar's budget; almost all of it in `DynamicMessage`'s decode and drop.
//! This walker reads each byte once and allocates only a field index per
//! message. prost-reflect's serializer stays the reference:
//! [`super::bootstrap::to_json_reference`] produces the same bytes, a test
//! compares them on every configuration the operator builds, and anything
//! this walker does not handle (`FieldMask`, groups, a repeated singular
//! message) makes it fail so the caller falls back to the reference.
//!
//! The options are the reference's as the bootstrap uses them: proto field
//! names, default values left out, enums by name, 64-bit integers as numbers.
//! Map entries are written in key order (the reference follows a hash map's
//! order; the bootstrap's maps have one entry each).

use base64::display::Base64Display;
use base64::prelude::BASE64_STANDARD;
use prost::Message;
use prost_reflect::{Cardinality, FieldDescriptor, Kind, MessageDescriptor};
use serde::ser::{Error as _, Serialize, SerializeMap, SerializeSeq, Serializer};

/// One field occurrence on the wire.
#[derive(Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    prost::encoding::decode_varint(buf).map_err(|e| e.to_string())
}

/// The occurrences of a message's fields, in field number order (stable:
/// repeated occurrences keep their order).
fn occurrences(mut buf: &[u8]) -> Result<Vec<(u32, Raw<'_>)>, String> {
    let mut out = Vec::with_capacity(8);
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let number = u32::try_from(key >> 3).map_err(|_| "field number out of range".to_owned())?;
        let raw = match key & 7 {
            0 => Raw::Varint(varint(&mut buf)?),
            1 => {
                let (b, rest) = buf.split_first_chunk::<8>().ok_or("truncated fixed64")?;
                buf = rest;
                Raw::Fixed64(u64::from_le_bytes(*b))
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| "length out of range".to_owned())?;
                if buf.len() < len {
                    return Err("truncated length-delimited field".to_owned());
                }
                let (b, rest) = buf.split_at(len);
                buf = rest;
                Raw::Len(b)
            }
            5 => {
                let (b, rest) = buf.split_first_chunk::<4>().ok_or("truncated fixed32")?;
                buf = rest;
                Raw::Fixed32(u32::from_le_bytes(*b))
            }
            w => return Err(format!("wire type {w} is not supported")),
        };
        out.push((number, raw));
    }
    // Already in order when prost wrote it in field number order; otherwise
    // (oneofs are written last) a stable sort keeps repeated occurrences in order.
    if !out.windows(2).all(|w| w[0].0 <= w[1].0) {
        out.sort_by_key(|(n, _)| *n);
    }
    Ok(out)
}

/// A message to write: its descriptor and wire bytes.
pub struct Wire<'a> {
    /// The message type.
    pub desc: MessageDescriptor,
    /// Its encoding.
    pub bytes: &'a [u8],
}

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let name = self.desc.full_name();
        if !name.starts_with("google.protobuf.") {
            let mut map = s.serialize_map(None)?;
            fields(&mut map, &self.desc, self.bytes)?;
            return map.end();
        }
        match name {
            "google.protobuf.Any" => any(self.bytes, &self.desc, s),
            "google.protobuf.Duration" => {
                let d = prost_types::Duration::decode(self.bytes).map_err(S::Error::custom)?;
                s.collect_str(&d)
            }
            "google.protobuf.Timestamp" => {
                let t = prost_types::Timestamp::decode(self.bytes).map_err(S::Error::custom)?;
                s.collect_str(&t)
            }
            "google.protobuf.BoolValue" => {
                s.serialize_bool(bool::decode(self.bytes).map_err(S::Error::custom)?)
            }
            "google.protobuf.UInt32Value" => {
                s.serialize_u32(u32::decode(self.bytes).map_err(S::Error::custom)?)
            }
            "google.protobuf.UInt64Value" => {
                s.serialize_u64(u64::decode(self.bytes).map_err(S::Error::custom)?)
            }
            "google.protobuf.Int32Value" => {
                s.serialize_i32(i32::decode(self.bytes).map_err(S::Error::custom)?)
            }
            "google.protobuf.Int64Value" => {
                s.serialize_i64(i64::decode(self.bytes).map_err(S::Error::custom)?)
            }
            "google.protobuf.StringValue" => {
                s.serialize_str(&String::decode(self.bytes).map_err(S::Error::custom)?)
            }
            "google.protobuf.DoubleValue" => float64(f64::decode(self.bytes).map_err(S::Error::custom)?, s),
            "google.protobuf.FloatValue" => float32(f32::decode(self.bytes).map_err(S::Error::custom)?, s),
            "google.protobuf.BytesValue" => {
                let b = Vec::<u8>::decode(self.bytes).map_err(S::Error::custom)?;
                s.collect_str(&Base64Display::new(&b, &BASE64_STANDARD))
            }
            "google.protobuf.Struct" => {
                let v = prost_types::Struct::decode(self.bytes).map_err(S::Error::custom)?;
                StructValue(&v).serialize(s)
            }
            "google.protobuf.Value" => {
                let v = prost_types::Value::decode(self.bytes).map_err(S::Error::custom)?;
                JsonValue(&v).serialize(s)
            }
            "google.protobuf.ListValue" => {
                let v = prost_types::ListValue::decode(self.bytes).map_err(S::Error::custom)?;
                s.collect_seq(v.values.iter().map(JsonValue))
            }
            "google.protobuf.Empty" => s.collect_map(std::iter::empty::<((), ())>()),
            "google.protobuf.FieldMask" => {
                Err(S::Error::custom("google.protobuf.FieldMask is not supported"))
            }
            _ => {
                let mut map = s.serialize_map(None)?;
                fields(&mut map, &self.desc, self.bytes)?;
                map.end()
            }
        }
    }
}

fn is_well_known(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.Any"
            | "google.protobuf.Duration"
            | "google.protobuf.Timestamp"
            | "google.protobuf.BoolValue"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.StringValue"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.Struct"
            | "google.protobuf.Value"
            | "google.protobuf.ListValue"
            | "google.protobuf.Empty"
            | "google.protobuf.FieldMask"
    )
}

/// `{"@type": url, ...fields}`, or `{"@type": url, "value": ...}` for a
/// well-known payload, as the proto3 JSON mapping writes an `Any`.
fn any<S: Serializer>(bytes: &[u8], desc: &MessageDescriptor, s: S) -> Result<S::Ok, S::Error> {
    // Borrowed from the wire: the payload is not copied.
    let (mut type_url, mut value): (&str, &[u8]) = ("", &[]);
    for (number, raw) in occurrences(bytes).map_err(S::Error::custom)? {
        match (number, raw) {
            (1, Raw::Len(b)) => type_url = std::str::from_utf8(b).map_err(S::Error::custom)?,
            (2, Raw::Len(b)) => value = b,
            _ => return Err(S::Error::custom("a malformed google.protobuf.Any")),
        }
    }
    let any = AnyRef { type_url, value };
    let name =
        any.type_url.rsplit_once('/').map(|(_, n)| n).ok_or_else(|| S::Error::custom("bad type URL"))?;
    let payload = desc
        .parent_pool()
        .get_message_by_name(name)
        .ok_or_else(|| S::Error::custom(format!("message '{name}' not found")))?;
    let mut map = s.serialize_map(None)?;
    map.serialize_entry("@type", &any.type_url)?;
    if is_well_known(name) {
        map.serialize_entry("value", &Wire { desc: payload, bytes: any.value })?;
    } else {
        fields(&mut map, &payload, any.value)?;
    }
    map.end()
}

struct AnyRef<'a> {
    type_url: &'a str,
    value: &'a [u8],
}

/// Writes the present fields of a message into `map`.
fn fields<M: SerializeMap>(map: &mut M, desc: &MessageDescriptor, bytes: &[u8]) -> Result<(), M::Error> {
    let all = occurrences(bytes).map_err(M::Error::custom)?;
    let mut rest = all.as_slice();
    while let Some(&(number, _)) = rest.first() {
        let n = rest.iter().take_while(|(k, _)| *k == number).count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let field = desc
            .get_field(number)
            .ok_or_else(|| M::Error::custom(format!("{} has no field {number}", desc.full_name())))?;
        map.serialize_key(field.name())?;
        let kind = field.kind();
        if field.cardinality() == Cardinality::Repeated {
            if matches!(&kind, Kind::Message(entry) if entry.is_map_entry()) {
                map.serialize_value(&MapField { field: &field, group })?;
            } else {
                map.serialize_value(&ListField { field: &field, group })?;
            }
        } else {
            if group.len() > 1 && matches!(kind, Kind::Message(_)) {
                return Err(M::Error::custom("a singular message field written twice is not supported"));
            }
            // The last occurrence of a scalar wins, as in a protobuf parser.
            let raw = group[group.len() - 1].1;
            map.serialize_value(&Scalar { kind, raw })?;
        }
    }
    Ok(())
}

struct ListField<'a, 'b> {
    field: &'a FieldDescriptor,
    group: &'a [(u32, Raw<'b>)],
}

impl Serialize for ListField<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let kind = self.field.kind();
        let packable = !matches!(kind, Kind::String | Kind::Bytes | Kind::Message(_));
        let mut seq = s.serialize_seq(None)?;
        for (_, raw) in self.group {
            match raw {
                Raw::Len(packed) if packable => {
                    let mut buf = *packed;
                    while !buf.is_empty() {
                        let raw = match kind {
                            Kind::Double | Kind::Fixed64 | Kind::Sfixed64 => {
                                let (b, rest) = buf
                                    .split_first_chunk::<8>()
                                    .ok_or_else(|| S::Error::custom("truncated"))?;
                                buf = rest;
                                Raw::Fixed64(u64::from_le_bytes(*b))
                            }
                            Kind::Float | Kind::Fixed32 | Kind::Sfixed32 => {
                                let (b, rest) = buf
                                    .split_first_chunk::<4>()
                                    .ok_or_else(|| S::Error::custom("truncated"))?;
                                buf = rest;
                                Raw::Fixed32(u32::from_le_bytes(*b))
                            }
                            _ => Raw::Varint(varint(&mut buf).map_err(S::Error::custom)?),
                        };
                        seq.serialize_element(&Scalar { kind: kind.clone(), raw })?;
                    }
                }
                raw => seq.serialize_element(&Scalar { kind: kind.clone(), raw: *raw })?,
            }
        }
        seq.end()
    }
}

struct MapField<'a, 'b> {
    field: &'a FieldDescriptor,
    group: &'a [(u32, Raw<'b>)],
}

impl Serialize for MapField<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Kind::Message(entry) = self.field.kind() else {
            return Err(S::Error::custom("a map field without an entry type"));
        };
        let key_field = entry.map_entry_key_field();
        let value_field = entry.map_entry_value_field();
        let mut entries: Vec<(String, Option<Raw<'_>>)> = Vec::with_capacity(self.group.len());
        for (_, raw) in self.group {
            let Raw::Len(bytes) = raw else {
                return Err(S::Error::custom("a map entry that is not a message"));
            };
            let mut key = None;
            let mut value = None;
            for (number, raw) in occurrences(bytes).map_err(S::Error::custom)? {
                if number == 1 {
                    key = Some(raw);
                } else if number == 2 {
                    value = Some(raw);
                }
            }
            let key = match (key_field.kind(), key) {
                (Kind::String, Some(Raw::Len(b))) => {
                    std::str::from_utf8(b).map_err(S::Error::custom)?.to_owned()
                }
                (Kind::String, None) => String::new(),
                (Kind::Bool, k) => matches!(k, Some(Raw::Varint(v)) if v != 0).to_string(),
                (kind, k) => {
                    let raw = k.unwrap_or(Raw::Varint(0));
                    serde_json::to_string(&Scalar { kind, raw })
                        .map_err(S::Error::custom)?
                        .trim_matches('"')
                        .to_owned()
                }
            };
            entries.push((key, value));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let mut map = s.serialize_map(Some(entries.len()))?;
        for (key, value) in &entries {
            map.serialize_key(key)?;
            match value {
                Some(raw) => map.serialize_value(&Scalar { kind: value_field.kind(), raw: *raw })?,
                None => map.serialize_value(&Default { kind: value_field.kind() })?,
            }
        }
        map.end()
    }
}

/// A map value absent from its entry: the type's default.
struct Default {
    kind: Kind,
}

impl Serialize for Default {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.kind {
            Kind::Message(desc) => Wire { desc: desc.clone(), bytes: &[] }.serialize(s),
            Kind::String | Kind::Bytes => s.serialize_str(""),
            kind => Scalar { kind: kind.clone(), raw: Raw::Varint(0) }.serialize(s),
        }
    }
}

struct Scalar<'b> {
    kind: Kind,
    raw: Raw<'b>,
}

/// The proto3 JSON spelling of a non-finite number.
fn non_finite(v: f64) -> Option<&'static str> {
    if v.is_finite() {
        None
    } else if v.is_nan() {
        Some("NaN")
    } else if v > 0.0 {
        Some("Infinity")
    } else {
        Some("-Infinity")
    }
}

fn float64<S: Serializer>(v: f64, s: S) -> Result<S::Ok, S::Error> {
    match non_finite(v) {
        Some(text) => s.serialize_str(text),
        None => s.serialize_f64(v),
    }
}

fn float32<S: Serializer>(v: f32, s: S) -> Result<S::Ok, S::Error> {
    match non_finite(f64::from(v)) {
        Some(text) => s.serialize_str(text),
        None => s.serialize_f32(v),
    }
}

impl Serialize for Scalar<'_> {
    // Narrowing casts below are the protobuf wire rules (an int32 is the low
    // 32 bits of its varint).
    #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mismatch = || S::Error::custom(format!("wire type does not match {:?}", self.kind));
        match (&self.kind, self.raw) {
            (Kind::Message(desc), Raw::Len(bytes)) => Wire { desc: desc.clone(), bytes }.serialize(s),
            (Kind::String, Raw::Len(bytes)) => {
                s.serialize_str(std::str::from_utf8(bytes).map_err(S::Error::custom)?)
            }
            (Kind::Bytes, Raw::Len(bytes)) => s.collect_str(&Base64Display::new(bytes, &BASE64_STANDARD)),
            (Kind::Bool, Raw::Varint(v)) => s.serialize_bool(v != 0),
            (Kind::Int32, Raw::Varint(v)) => s.serialize_i32(v as i32),
            (Kind::Int64, Raw::Varint(v)) => s.serialize_i64(v as i64),
            (Kind::Uint32, Raw::Varint(v)) => s.serialize_u32(v as u32),
            (Kind::Uint64, Raw::Varint(v)) => s.serialize_u64(v),
            (Kind::Sint32, Raw::Varint(v)) => {
                let v = v as u32;
                s.serialize_i32(((v >> 1) as i32) ^ -((v & 1) as i32))
            }
            (Kind::Sint64, Raw::Varint(v)) => s.serialize_i64(((v >> 1) as i64) ^ -((v & 1) as i64)),
            (Kind::Fixed32, Raw::Fixed32(v)) => s.serialize_u32(v),
            (Kind::Sfixed32, Raw::Fixed32(v)) => s.serialize_i32(v as i32),
            (Kind::Float, Raw::Fixed32(v)) => float32(f32::from_bits(v), s),
            (Kind::Fixed64, Raw::Fixed64(v)) => s.serialize_u64(v),
            (Kind::Sfixed64, Raw::Fixed64(v)) => s.serialize_i64(v as i64),
            (Kind::Double, Raw::Fixed64(v)) => float64(f64::from_bits(v), s),
            (Kind::Enum(e), Raw::Varint(v)) => {
                let number = v as i32;
                if e.full_name() == "google.protobuf.NullValue" {
                    s.serialize_none()
                } else {
                    match e.get_value(number) {
                        Some(value) => s.serialize_str(value.name()),
                        None => s.serialize_i32(number),
                    }
                }
            }
            _ => Err(mismatch()),
        }
    }
}

struct StructValue<'a>(&'a prost_types::Struct);

impl Serialize for StructValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.fields.iter().map(|(k, v)| (k, JsonValue(v))))
    }
}

struct JsonValue<'a>(&'a prost_types::Value);

impl Serialize for JsonValue<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use prost_types::value::Kind as V;
        match &self.0.kind {
            None | Some(V::NullValue(_)) => s.serialize_none(),
            Some(V::BoolValue(b)) => s.serialize_bool(*b),
            Some(V::NumberValue(n)) if n.is_finite() => s.serialize_f64(*n),
            Some(V::NumberValue(_)) => Err(S::Error::custom("a non-finite number in google.protobuf.Value")),
            Some(V::StringValue(v)) => s.serialize_str(v),
            Some(V::ListValue(l)) => s.collect_seq(l.values.iter().map(JsonValue)),
            Some(V::StructValue(v)) => StructValue(v).serialize(s),
        }
    }
}
