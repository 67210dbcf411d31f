//! What each configuration key holds, read off the file's own types. Environment values
//! arrive as text; to turn `AFTERCART__WORKER__CONCURRENCY=64` into a number but keep
//! `AFTERCART__HTTP__API_TOKEN=12345678` a string, the overlay needs each key's type.
//! Instead of a second list that could drift from the `Raw*` structs, [`kinds`] runs
//! their `Deserialize` impls against a probe that answers every field with a
//! placeholder and records what the field asked for (a string, a whole number, …).

use serde::Deserialize;
use serde::de::value::{MapDeserializer, SeqDeserializer, StrDeserializer};
use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};
use std::collections::BTreeMap;

/// What a key holds, as far as an environment value is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Strings (durations, URLs and secrets included): the value is taken verbatim.
    Text,
    /// An unsigned integer.
    Whole,
    /// A signed integer.
    Integer,
    /// A floating-point number.
    Number,
    Bool,
    /// A table or a list: not settable from the environment.
    Nested,
}

/// Every key of `T` by dotted path ("worker.concurrency"), sections included. Fails only
/// for a field type the probe cannot answer (one that needs `deserialize_any`).
pub(super) fn kinds<'de, T: Deserialize<'de>>() -> Result<BTreeMap<String, Kind>, String> {
    let mut out = BTreeMap::new();
    T::deserialize(Probe {
        path: String::new(),
        out: &mut out,
    })
    .map_err(|e| e.to_string())?;
    Ok(out)
}

struct Probe<'a> {
    path: String,
    out: &'a mut BTreeMap<String, Kind>,
}

impl Probe<'_> {
    fn record(&mut self, kind: Kind) {
        if !self.path.is_empty() {
            self.out.insert(self.path.clone(), kind);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ProbeError(String);

impl de::Error for ProbeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        ProbeError(msg.to_string())
    }
}

macro_rules! answer {
    ($($method:ident => $kind:ident, $visit:ident($value:expr);)*) => {
        $(fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, ProbeError> {
            self.record(Kind::$kind);
            visitor.$visit($value)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = ProbeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, ProbeError> {
        Err(ProbeError(format!("{}: type cannot be probed", self.path)))
    }

    answer! {
        deserialize_bool => Bool, visit_bool(false);
        deserialize_u8 => Whole, visit_u64(0);
        deserialize_u16 => Whole, visit_u64(0);
        deserialize_u32 => Whole, visit_u64(0);
        deserialize_u64 => Whole, visit_u64(0);
        deserialize_i8 => Integer, visit_i64(0);
        deserialize_i16 => Integer, visit_i64(0);
        deserialize_i32 => Integer, visit_i64(0);
        deserialize_i64 => Integer, visit_i64(0);
        deserialize_f32 => Number, visit_f64(0.0);
        deserialize_f64 => Number, visit_f64(0.0);
        deserialize_char => Text, visit_char('x');
        deserialize_str => Text, visit_str("");
        deserialize_string => Text, visit_str("");
        deserialize_identifier => Text, visit_str("");
        deserialize_bytes => Nested, visit_bytes(&[]);
        deserialize_byte_buf => Nested, visit_bytes(&[]);
    }

    fn deserialize_unit<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Nested);
        visitor.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, ProbeError> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Nested);
        visitor.visit_seq(SeqDeserializer::<_, ProbeError>::new(
            std::iter::empty::<u8>(),
        ))
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, ProbeError> {
        self.record(Kind::Nested);
        visitor.visit_map(MapDeserializer::<_, ProbeError>::new(std::iter::empty::<(
            u8,
            u8,
        )>()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.record(Kind::Nested);
        visitor.visit_map(Fields {
            fields,
            next: 0,
            path: self.path,
            out: self.out,
        })
    }

    /// Unit variants, which TOML (and the environment) write as strings.
    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, ProbeError> {
        self.record(Kind::Text);
        let first: StrDeserializer<'_, ProbeError> =
            variants.first().copied().unwrap_or("").into_deserializer();
        visitor.visit_enum(first)
    }
}

/// A struct's fields, each one answered by a probe one level down.
struct Fields<'a> {
    fields: &'static [&'static str],
    next: usize,
    path: String,
    out: &'a mut BTreeMap<String, Kind>,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = ProbeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, ProbeError> {
        let Some(name) = self.fields.get(self.next) else {
            return Ok(None);
        };
        let key: StrDeserializer<'_, ProbeError> = name.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, ProbeError> {
        let name = self.fields[self.next];
        self.next += 1;
        let path = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        };
        seed.deserialize(Probe {
            path,
            out: &mut *self.out,
        })
    }
}
