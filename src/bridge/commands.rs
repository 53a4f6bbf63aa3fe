//! Commands on `<prefix>/<device>/<point>/set`: a bare value (`21.5`, `true`, `on`,
//! `off`, `1`, `0`) or JSON `{"value": ..., "id": "abc"}`; results on `.../set/result`
//! as `{"id": "abc", "ok": true, "value": ...}` or `{"id": ..., "ok": false, "error":
//! "..."}`. Parsing and formatting only: a command is executed by `app`.

use crate::devices::Value;

/// A parsed command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub value: Value,
    /// The caller's id, echoed in the result.
    pub id: Option<serde_json::Value>,
    /// When it was issued (a JSON command's `ts`), for the point's `max_age`.
    pub issued: Option<std::time::SystemTime>,
}

/// Why a payload is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the payload is not UTF-8")]
    NotText,
    #[error("{0:?} is not a value: send a number, true/false, on/off, or JSON {{\"value\": ...}}")]
    NotAValue(String),
    #[error("JSON command without \"value\"")]
    NoValue,
    #[error("\"ts\" {0:?} is not a UTC RFC 3339 time like 2026-11-22T08:00:00.123Z")]
    BadTimestamp(String),
}

/// Parses a command payload.
pub fn parse(payload: &[u8]) -> Result<Command, CommandError> {
    let text = std::str::from_utf8(payload)
        .map_err(|_| CommandError::NotText)?
        .trim();
    if text.starts_with('{') {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|_| CommandError::NotAValue(text.into()))?;
        let value = json.get("value").ok_or(CommandError::NoValue)?;
        let value = json_value(value).ok_or_else(|| CommandError::NotAValue(value.to_string()))?;
        let issued = match json.get("ts") {
            None => None,
            Some(ts) => Some(
                ts.as_str()
                    .and_then(crate::bridge::telemetry::parse_rfc3339)
                    .ok_or_else(|| CommandError::BadTimestamp(ts.to_string()))?,
            ),
        };
        return Ok(Command {
            value,
            id: json.get("id").cloned(),
            issued,
        });
    }
    Value::parse_text(text)
        .map(|value| Command {
            value,
            id: None,
            issued: None,
        })
        .ok_or_else(|| CommandError::NotAValue(text.into()))
}

fn json_value(v: &serde_json::Value) -> Option<Value> {
    match v {
        serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
        serde_json::Value::Number(n) => n.as_f64().map(Value::Number),
        serde_json::Value::String(s) => Value::parse_text(s),
        _ => None,
    }
}

/// The result payload of a command.
pub fn result(id: Option<&serde_json::Value>, outcome: Result<Value, String>) -> String {
    let mut object = serde_json::Map::new();
    object.insert("id".into(), id.cloned().unwrap_or(serde_json::Value::Null));
    match outcome {
        Ok(value) => {
            object.insert("ok".into(), true.into());
            object.insert("value".into(), value.to_json());
        }
        Err(error) => {
            object.insert("ok".into(), false.into());
            object.insert("error".into(), error.into());
        }
    }
    serde_json::Value::Object(object).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_and_json_commands_parse_and_garbage_is_refused() {
        assert_eq!(parse(b"on").unwrap().value, Value::Bool(true));
        assert_eq!(parse(b" OFF ").unwrap().value, Value::Bool(false));
        assert_eq!(parse(b"21.5").unwrap().value, Value::Number(21.5));
        let c = parse(br#"{"value": "on", "id": "abc"}"#).unwrap();
        assert_eq!(c.value, Value::Bool(true));
        assert_eq!(c.id, Some(serde_json::json!("abc")));
        assert_eq!(parse(br#"{"id": 1}"#), Err(CommandError::NoValue));
        assert!(matches!(parse(b"banana"), Err(CommandError::NotAValue(_))));
        assert!(matches!(parse(b"NaN"), Err(CommandError::NotAValue(_))));
        assert_eq!(parse(&[0xff, 0xfe]), Err(CommandError::NotText));
    }

    #[test]
    fn results_carry_the_id_and_either_the_value_or_the_error() {
        let ok: serde_json::Value = serde_json::from_str(&result(
            Some(&serde_json::json!("a")),
            Ok(Value::Bool(true)),
        ))
        .unwrap();
        assert_eq!(
            ok,
            serde_json::json!({"id": "a", "ok": true, "value": true})
        );
        let err: serde_json::Value =
            serde_json::from_str(&result(None, Err("nope".into()))).unwrap();
        assert_eq!(
            err,
            serde_json::json!({"id": null, "ok": false, "error": "nope"})
        );
    }
}
