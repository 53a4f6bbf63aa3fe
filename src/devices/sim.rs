//! The simulated device: sine waves, counters, switches and constants, for demos and
//! end-to-end tests. Time comes in as the elapsed duration, so tests need no clock.

use std::time::Duration;

use super::{Value, WriteError};
use crate::config::{Device, Point, SimWave};

#[derive(Debug)]
pub struct SimDevice {
    points: Vec<(Point, Value)>,
}

impl SimDevice {
    pub fn new(device: &Device) -> Self {
        let points = device
            .points
            .iter()
            .map(|p| {
                let initial = match p.sim {
                    Some(SimWave::Switch) => Value::Bool(false),
                    _ => Value::Number(p.min.unwrap_or(0.0)),
                };
                (p.clone(), initial)
            })
            .collect();
        SimDevice { points }
    }

    /// Reads every point at `elapsed` since the device started.
    pub fn read(&mut self, elapsed: Duration) -> Vec<(String, Value)> {
        for (point, value) in &mut self.points {
            *value = match (point.sim, value.clone()) {
                (Some(SimWave::Sine { period }), _) => {
                    let (lo, hi) = (point.min.unwrap_or(0.0), point.max.unwrap_or(1.0));
                    let phase = elapsed.as_secs_f64() / period.as_secs_f64();
                    let wave = (phase * std::f64::consts::TAU).sin();
                    // Two decimals: what a real sensor would report.
                    let v = lo + (hi - lo) * (wave + 1.0) / 2.0;
                    Value::Number((v * 100.0).round() / 100.0)
                }
                (Some(SimWave::Counter), Value::Number(n)) => Value::Number(n + 1.0),
                (_, v) => v,
            };
        }
        self.points
            .iter()
            .map(|(p, v)| (p.id.clone(), v.clone()))
            .collect()
    }

    /// Writes a point: checks it is writable, its type and its range.
    pub fn write(&mut self, point: &str, value: Value) -> Result<Value, WriteError> {
        let Some((p, current)) = self.points.iter_mut().find(|(p, _)| p.id == point) else {
            return Err(WriteError::UnknownPoint(point.to_string()));
        };
        if !p.writable {
            return Err(WriteError::NotWritable(point.to_string()));
        }
        let value = match (p.sim, value) {
            (Some(SimWave::Switch), Value::Bool(b)) => Value::Bool(b),
            (Some(SimWave::Switch), Value::Number(n)) if n == 0.0 || n == 1.0 => {
                Value::Bool(n == 1.0)
            }
            (Some(SimWave::Switch), _) => {
                return Err(WriteError::WrongType {
                    point: point.to_string(),
                    expected: "on/off, true/false or 1/0",
                });
            }
            (_, Value::Number(n)) => {
                let (min, max) = (p.min.unwrap_or(f64::MIN), p.max.unwrap_or(f64::MAX));
                if !(min..=max).contains(&n) {
                    return Err(WriteError::OutOfRange { value: n, min, max });
                }
                Value::Number(n)
            }
            (_, Value::Bool(_) | Value::Text(_)) => {
                return Err(WriteError::WrongType {
                    point: point.to_string(),
                    expected: "a number",
                });
            }
        };
        *current = value.clone();
        Ok(value)
    }

    /// The point's configuration, if it exists.
    pub fn point(&self, id: &str) -> Option<&Point> {
        self.points.iter().find(|(p, _)| p.id == id).map(|(p, _)| p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_config;

    fn demo() -> SimDevice {
        SimDevice::new(&default_config().unwrap().devices[0])
    }

    #[test]
    fn the_sine_stays_within_its_range_and_the_counter_counts() {
        let mut d = demo();
        let mut counts = Vec::new();
        for s in 0..120 {
            let readings = d.read(Duration::from_secs(s));
            for (id, v) in readings {
                match (id.as_str(), v) {
                    ("temperature", Value::Number(t)) => assert!((18.0..=24.0).contains(&t)),
                    ("counter", Value::Number(n)) => counts.push(n),
                    _ => {}
                }
            }
        }
        assert_eq!(counts[..3], [1.0, 2.0, 3.0]);
    }

    #[test]
    fn writes_are_checked_before_they_change_anything() {
        let mut d = demo();
        assert_eq!(d.write("switch", Value::Bool(true)), Ok(Value::Bool(true)));
        assert_eq!(
            d.write("switch", Value::Number(0.0)),
            Ok(Value::Bool(false))
        );
        assert!(matches!(
            d.write("switch", Value::Number(7.0)),
            Err(WriteError::WrongType { .. })
        ));
        assert!(matches!(
            d.write("counter", Value::Number(1.0)),
            Err(WriteError::NotWritable(_))
        ));
        assert!(matches!(
            d.write("nope", Value::Number(1.0)),
            Err(WriteError::UnknownPoint(_))
        ));
    }
}
