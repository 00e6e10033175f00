//! Go `encoding/json` compatibility helpers.
//!
//! flannel decodes its config and lease values with Go's `encoding/json`, which matches object
//! keys to struct fields case-insensitively, lets the last matching key win, ignores unknown keys,
//! and re-emits `json.RawMessage` fields compacted with HTML-escaping. These helpers give serde
//! the same behaviour.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// A JSON object's members in document order (duplicates kept).
#[derive(Debug)]
pub(crate) struct GoObject<V>(pub(crate) Vec<(String, V)>);

impl<V> GoObject<V> {
    /// The value Go would store in the field `name`: the last member whose key equals `name`
    /// ignoring ASCII case (Go folds case the same way for ASCII field names).
    pub(crate) fn get(&self, name: &str) -> Option<&V> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for GoObject<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for ObjVisitor<V> {
            type Value = GoObject<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, V>()? {
                    members.push((k, v));
                }
                Ok(GoObject(members))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                // Go: unmarshalling `null` into a struct is a no-op.
                Ok(GoObject(Vec::new()))
            }
        }
        d.deserialize_any(ObjVisitor(PhantomData))
    }
}

/// Appends `s` as a JSON string the way Go's `json.Marshal` writes it (HTML-safe: `<`, `>`, `&`,
/// U+2028 and U+2029 are `\u`-escaped; `\b \f \n \r \t` short escapes; other controls `\u00XX`).
pub(crate) fn push_go_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => push_u_escape(out, c),
            c if (c as u32) < 0x20 => push_u_escape(out, c),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_u_escape(out: &mut String, c: char) {
    use std::fmt::Write;
    // Writing to a String cannot fail.
    let _ = write!(out, "\\u{:04x}", c as u32);
}

/// Appends raw JSON (already known to be valid) compacted like Go's `json.Compact` with
/// HTML escaping, which is what `json.Marshal` does to a `json.RawMessage`.
pub(crate) fn push_compact(out: &mut String, raw: &str) {
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            match c {
                _ if escaped => {
                    escaped = false;
                    out.push(c);
                }
                '\\' => {
                    escaped = true;
                    out.push(c);
                }
                '"' => {
                    in_string = false;
                    out.push(c);
                }
                '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => push_u_escape(out, c),
                c => out.push(c),
            }
        } else {
            match c {
                ' ' | '\t' | '\n' | '\r' => {}
                '"' => {
                    in_string = true;
                    out.push(c);
                }
                c => out.push(c),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_case_insensitive_member_wins() {
        let o: GoObject<serde_json::Value> =
            serde_json::from_str(r#"{"Network":"a","NETWORK":"b","x":1}"#).expect("valid JSON");
        assert_eq!(o.get("network"), Some(&serde_json::json!("b")));
        assert_eq!(o.get("y"), None);
        let o: GoObject<serde_json::Value> = serde_json::from_str("null").expect("null");
        assert!(o.0.is_empty());
        assert!(serde_json::from_str::<GoObject<serde_json::Value>>("[1]").is_err());
    }

    #[test]
    fn go_string_and_compact() {
        let mut s = String::new();
        push_go_string(&mut s, "a\"b\\<&>\u{1}\n\u{2028}é");
        assert_eq!(s, r#""a\"b\\\u003c\u0026\u003e\u0001\n\u2028é""#);
        let mut s = String::new();
        push_compact(&mut s, "{ \"VNI\" : 1,\n \"VtepMAC\": \"a b<\\\"\" }");
        assert_eq!(s, r#"{"VNI":1,"VtepMAC":"a b\u003c\""}"#);
    }
}
