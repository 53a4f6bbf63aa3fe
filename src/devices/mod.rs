//! Field devices as the gateway sees them: the values their points hold and the writes
//! they accept. One module per kind of source (`sim` today); none of them knows about
//! MQTT: the bridge turns readings into telemetry and commands into writes.

pub mod gpio;
pub mod serial;
pub mod sim;

/// A point's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Number(f64),
    /// Text read from a device (a Modbus `string(len)` point: a serial number, a model).
    Text(String),
}

impl Value {
    /// Reads a value as people and devices write it: `true`/`on`, `false`/`off` (any
    /// case), or a finite number.
    pub fn parse_text(text: &str) -> Option<Value> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "on" => Some(Value::Bool(true)),
            "false" | "off" => Some(Value::Bool(false)),
            other => other
                .parse::<f64>()
                .ok()
                .filter(|n| n.is_finite())
                .map(Value::Number),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match *self {
            Value::Bool(b) => serde_json::Value::Bool(b),
            Value::Text(ref text) => serde_json::Value::String(text.clone()),
            // A whole number reads as one (`3`, not `3.0`), as people expect of counters.
            Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => {
                serde_json::Value::Number((n as i64).into())
            }
            Value::Number(n) => serde_json::Number::from_f64(n)
                .map_or(serde_json::Value::Null, serde_json::Value::Number),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Number(n) => write!(f, "{n}"),
            Value::Text(text) => f.write_str(text),
        }
    }
}

/// How far a reading can be trusted (in the telemetry payload).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quality {
    Good,
    Bad,
    Stale,
}

impl Quality {
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Good => "good",
            Quality::Bad => "bad",
            Quality::Stale => "stale",
        }
    }
}

/// Why a write was refused; said in the command's result, never executed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WriteError {
    #[error("point {0:?} does not exist on this device")]
    UnknownPoint(String),
    #[error("point {0:?} is not writable")]
    NotWritable(String),
    #[error("{value} is outside {min}..={max}")]
    OutOfRange { value: f64, min: f64, max: f64 },
    #[error("point {point:?} takes {expected}")]
    WrongType {
        point: String,
        expected: &'static str,
    },
}
