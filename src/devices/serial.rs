//! Line-oriented serial sensors: each `\n`-terminated line is a frame, read as JSON
//! (`{"temperature": 21.5, "door": true}`) or as key=value pairs (`temperature=21.5
//! door=1`); a write to a point sends `key=value\n`. This module turns lines into values
//! and values into lines; opening and watching the port is the runtime's job.

use super::{Value, WriteError};
use crate::config::{FrameFormat, Point};

/// Reads frames of one format; a regular expression is compiled once.
#[derive(Debug)]
pub struct FrameParser {
    format: FrameFormat,
    regex: Option<regex::Regex>,
}

impl FrameParser {
    /// Fails only on a bad pattern (the configuration check catches those first).
    pub fn new(format: &FrameFormat) -> Result<FrameParser, regex::Error> {
        let regex = match format {
            FrameFormat::Regex(pattern) => Some(regex::Regex::new(pattern)?),
            _ => None,
        };
        Ok(FrameParser {
            format: format.clone(),
            regex,
        })
    }

    /// The values a frame holds for the device's points, by point id. Fields no point
    /// asks for are ignored; a frame that does not parse gives nothing (sensors print
    /// banners).
    pub fn parse(&self, frame: &str, points: &[Point]) -> Vec<(String, Value)> {
        if let Some(regex) = &self.regex {
            let Some(captures) = regex.captures(frame) else {
                return Vec::new();
            };
            let fields: Vec<(String, Value)> = regex
                .capture_names()
                .flatten()
                .filter_map(|name| {
                    let text = captures.name(name)?.as_str();
                    Some((name.to_string(), Value::parse_text(text)?))
                })
                .collect();
            return by_point(fields, points);
        }
        parse_frame(&self.format, frame, points)
    }
}

fn by_point(fields: Vec<(String, Value)>, points: &[Point]) -> Vec<(String, Value)> {
    points
        .iter()
        .filter_map(|p| {
            fields
                .iter()
                .find(|(k, _)| *k == p.key)
                .map(|(_, v)| (p.id.clone(), v.clone()))
        })
        .collect()
}

/// [`FrameParser::parse`] for the formats that need no compiled state.
fn parse_frame(format: &FrameFormat, line: &str, points: &[Point]) -> Vec<(String, Value)> {
    let line = line.trim();
    let fields: Vec<(String, Value)> = match format {
        FrameFormat::Regex(_) => Vec::new(),
        FrameFormat::Json => match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(map)) => map
                .into_iter()
                .filter_map(|(k, v)| json_value(&v).map(|v| (k, v)))
                .collect(),
            _ => Vec::new(),
        },
        FrameFormat::KeyValue => line
            .split([' ', ',', ';', '\t'])
            .filter_map(|pair| pair.split_once('='))
            .filter_map(|(k, v)| Value::parse_text(v).map(|v| (k.to_string(), v)))
            .collect(),
    };
    by_point(fields, points)
}

fn json_value(v: &serde_json::Value) -> Option<Value> {
    match v {
        serde_json::Value::Bool(b) => Some(Value::Bool(*b)),
        serde_json::Value::Number(n) => n.as_f64().map(Value::Number),
        serde_json::Value::String(s) => Value::parse_text(s),
        _ => None,
    }
}

/// The line that writes `value` to `point` (checked for writability and range).
pub fn write_line(point: &Point, value: &Value) -> Result<String, WriteError> {
    if !point.writable {
        return Err(WriteError::NotWritable(point.id.clone()));
    }
    if let Value::Number(n) = *value {
        let (min, max) = (point.min.unwrap_or(f64::MIN), point.max.unwrap_or(f64::MAX));
        if !(min..=max).contains(&n) {
            return Err(WriteError::OutOfRange { value: n, min, max });
        }
    }
    let text = match value {
        Value::Bool(b) => u8::from(*b).to_string(),
        Value::Number(n) => n.to_string(),
        Value::Text(text) => text.clone(),
    };
    Ok(format!("{}={text}\n", point.key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn points() -> Vec<Point> {
        let yaml = "devices:\n  - id: s\n    source: serial\n    port: /dev/null\n    points:\n      - id: temperature\n        key: t\n      - id: door\n      - id: valve\n        writable: true\n        min: 0\n        max: 100\n";
        let config = crate::config::parse(yaml, std::path::Path::new(".")).unwrap();
        config.devices[0].points.clone()
    }

    #[test]
    fn json_and_key_value_frames_give_the_configured_points() {
        let p = points();
        let json = FrameParser::new(&FrameFormat::Json).unwrap();
        let key_value = FrameParser::new(&FrameFormat::KeyValue).unwrap();
        let got = json.parse(r#"{"t": 21.5, "door": true, "other": 1}"#, &p);
        assert_eq!(
            got,
            [
                ("temperature".to_string(), Value::Number(21.5)),
                ("door".to_string(), Value::Bool(true))
            ]
        );
        let got = key_value.parse("t=19.25, door=off;noise", &p);
        assert_eq!(
            got,
            [
                ("temperature".to_string(), Value::Number(19.25)),
                ("door".to_string(), Value::Bool(false))
            ]
        );
        assert!(json.parse("BOOT v1.2", &p).is_empty());
        assert!(key_value.parse("t=NaN", &p).is_empty());
        let regex = FrameParser::new(&FrameFormat::Regex(
            r"^T(?P<t>-?[0-9.]+) D(?P<door>[01])$".into(),
        ))
        .unwrap();
        assert_eq!(
            regex.parse("T-3.5 D1", &p),
            [
                ("temperature".to_string(), Value::Number(-3.5)),
                ("door".to_string(), Value::Number(1.0))
            ]
        );
        assert!(regex.parse("garbage", &p).is_empty());
    }

    #[test]
    fn writes_become_lines_and_are_checked_first() {
        let p = points();
        assert_eq!(
            write_line(&p[2], &Value::Number(40.0)),
            Ok("valve=40\n".to_string())
        );
        assert!(matches!(
            write_line(&p[2], &Value::Number(400.0)),
            Err(WriteError::OutOfRange { .. })
        ));
        assert!(matches!(
            write_line(&p[0], &Value::Number(1.0)),
            Err(WriteError::NotWritable(_))
        ));
    }
}
