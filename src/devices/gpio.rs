//! GPIO lines behind one small trait, so the gateway runs the same on a Raspberry Pi
//! (rppal), on any Linux board (gpiocdev, the GPIO character device) and in tests (a
//! mock backend whose lines are files). Opening fails with a clear error on a machine
//! without the hardware; the runtime then marks the device offline and retries. This
//! module must not know about MQTT.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::config::{GpioBackendKind, GpioChip, GpioLine};

#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error("GPIO (rppal): {0}")]
    Rppal(String),
    #[error("GPIO chip {chip}: {why}")]
    Cdev { chip: PathBuf, why: String },
    #[error("mock GPIO line {line}: {why}")]
    Mock { line: u32, why: String },
    #[error("line {0} is not configured as an output")]
    NotOutput(u32),
}

/// Reads inputs and drives outputs of the lines a device was opened with.
pub trait GpioBackend: Send {
    fn read(&mut self, line: u32) -> Result<bool, GpioError>;
    fn write(&mut self, line: u32, high: bool) -> Result<(), GpioError>;
}

/// Opens `lines` on `chip`: inputs with their pulls, outputs at their initial levels.
pub fn open(chip: &GpioChip, lines: &[GpioLine]) -> Result<Box<dyn GpioBackend>, GpioError> {
    let kind = match &chip.backend {
        GpioBackendKind::Auto if on_raspberry_pi() => GpioBackendKind::Rppal,
        GpioBackendKind::Auto => GpioBackendKind::Gpiocdev,
        other => other.clone(),
    };
    let mut backend: Box<dyn GpioBackend> = match kind {
        GpioBackendKind::Mock(dir) => Box::new(Mock { dir }),
        GpioBackendKind::Rppal => Box::new(Rppal::open(lines)?),
        GpioBackendKind::Gpiocdev | GpioBackendKind::Auto => {
            Box::new(Cdev::open(&chip.chip, lines)?)
        }
    };
    for line in lines.iter().filter(|l| l.output) {
        backend.write(line.line, line.initial)?;
    }
    Ok(backend)
}

fn on_raspberry_pi() -> bool {
    std::fs::read_to_string("/proc/device-tree/model").is_ok_and(|m| m.contains("Raspberry Pi"))
}

/// Software debounce for a polled input: a new level counts once every poll has seen it
/// for at least the debounce period (a contact bouncing between polls is ignored).
#[derive(Debug, Default, Clone, Copy)]
pub struct Debounce {
    stable: Option<bool>,
    candidate: Option<(bool, std::time::Instant)>,
}

impl Debounce {
    /// Feeds one reading; returns the level that counts now.
    pub fn feed(
        &mut self,
        level: bool,
        now: std::time::Instant,
        period: std::time::Duration,
    ) -> Option<bool> {
        match self.stable {
            None => self.stable = Some(level),
            Some(stable) if stable == level => self.candidate = None,
            Some(_) => match self.candidate {
                Some((candidate, since)) if candidate == level => {
                    if now.duration_since(since) >= period {
                        self.stable = Some(level);
                        self.candidate = None;
                    }
                }
                _ => {
                    self.candidate = Some((level, now));
                    if period.is_zero() {
                        self.stable = Some(level);
                        self.candidate = None;
                    }
                }
            },
        }
        self.stable
    }
}

/// Lines as files `<dir>/<line>` holding `0` or `1`: a test sets inputs by writing them
/// and reads outputs back.
struct Mock {
    dir: PathBuf,
}

impl GpioBackend for Mock {
    fn read(&mut self, line: u32) -> Result<bool, GpioError> {
        let path = self.dir.join(line.to_string());
        let text = std::fs::read_to_string(&path).map_err(|e| GpioError::Mock {
            line,
            why: format!("{}: {e}", path.display()),
        })?;
        Ok(text.trim() == "1")
    }

    fn write(&mut self, line: u32, high: bool) -> Result<(), GpioError> {
        let path = self.dir.join(line.to_string());
        // Written aside and renamed: a reader never sees a half-written (empty) line.
        let temporary = self.dir.join(format!(".{line}.tmp"));
        std::fs::write(&temporary, if high { "1\n" } else { "0\n" })
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|e| GpioError::Mock {
                line,
                why: format!("{}: {e}", path.display()),
            })
    }
}

/// The Linux GPIO character device: one request per line.
struct Cdev {
    chip: PathBuf,
    requests: HashMap<u32, (gpiocdev::Request, bool)>,
}

impl Cdev {
    fn open(chip: &std::path::Path, lines: &[GpioLine]) -> Result<Cdev, GpioError> {
        let err = |e: gpiocdev::Error| GpioError::Cdev {
            chip: chip.to_path_buf(),
            why: e.to_string(),
        };
        let mut requests = HashMap::new();
        for l in lines {
            let mut builder = gpiocdev::Request::builder();
            builder
                .on_chip(chip)
                .with_consumer("fieldgate")
                .with_line(l.line);
            if l.output {
                builder.as_output(gpiocdev::line::Value::from(l.initial));
            } else {
                builder.as_input();
                match l.pull {
                    Some(true) => {
                        builder.with_bias(gpiocdev::line::Bias::PullUp);
                    }
                    Some(false) => {
                        builder.with_bias(gpiocdev::line::Bias::PullDown);
                    }
                    None => {}
                }
            }
            requests.insert(l.line, (builder.request().map_err(err)?, l.output));
        }
        Ok(Cdev {
            chip: chip.to_path_buf(),
            requests,
        })
    }

    fn err(&self, why: String) -> GpioError {
        GpioError::Cdev {
            chip: self.chip.clone(),
            why,
        }
    }
}

impl GpioBackend for Cdev {
    fn read(&mut self, line: u32) -> Result<bool, GpioError> {
        let Some((request, _)) = self.requests.get(&line) else {
            return Err(self.err(format!("line {line} was not requested")));
        };
        request
            .value(line)
            .map(|v| v == gpiocdev::line::Value::Active)
            .map_err(|e| self.err(e.to_string()))
    }

    fn write(&mut self, line: u32, high: bool) -> Result<(), GpioError> {
        match self.requests.get(&line) {
            Some((request, true)) => request
                .set_value(line, gpiocdev::line::Value::from(high))
                .map(|_| ())
                .map_err(|e| self.err(e.to_string())),
            _ => Err(GpioError::NotOutput(line)),
        }
    }
}

/// A Raspberry Pi's GPIO through rppal (BCM line numbers).
struct Rppal {
    inputs: HashMap<u32, rppal::gpio::InputPin>,
    outputs: HashMap<u32, rppal::gpio::OutputPin>,
}

impl Rppal {
    fn open(lines: &[GpioLine]) -> Result<Rppal, GpioError> {
        let err = |e: rppal::gpio::Error| GpioError::Rppal(e.to_string());
        let gpio = rppal::gpio::Gpio::new().map_err(err)?;
        let mut inputs = HashMap::new();
        let mut outputs = HashMap::new();
        for l in lines {
            let number = u8::try_from(l.line)
                .map_err(|_| GpioError::Rppal(format!("line {} is not a BCM pin", l.line)))?;
            let pin = gpio.get(number).map_err(err)?;
            if l.output {
                let out = if l.initial {
                    pin.into_output_high()
                } else {
                    pin.into_output_low()
                };
                outputs.insert(l.line, out);
            } else {
                let input = match l.pull {
                    Some(true) => pin.into_input_pullup(),
                    Some(false) => pin.into_input_pulldown(),
                    None => pin.into_input(),
                };
                inputs.insert(l.line, input);
            }
        }
        Ok(Rppal { inputs, outputs })
    }
}

impl GpioBackend for Rppal {
    fn read(&mut self, line: u32) -> Result<bool, GpioError> {
        if let Some(pin) = self.inputs.get(&line) {
            return Ok(pin.is_high());
        }
        self.outputs
            .get(&line)
            .map(|pin| pin.is_set_high())
            .ok_or_else(|| GpioError::Rppal(format!("line {line} was not opened")))
    }

    fn write(&mut self, line: u32, high: bool) -> Result<(), GpioError> {
        let pin = self
            .outputs
            .get_mut(&line)
            .ok_or(GpioError::NotOutput(line))?;
        if high {
            pin.set_high();
        } else {
            pin.set_low();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_level_counts_only_after_holding_for_the_debounce_period() {
        let mut d = Debounce::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let period = Duration::from_millis(50);
        assert_eq!(
            d.feed(false, ms(0), period),
            Some(false),
            "the first reading counts"
        );
        assert_eq!(
            d.feed(true, ms(10), period),
            Some(false),
            "a new level, not yet"
        );
        assert_eq!(
            d.feed(false, ms(20), period),
            Some(false),
            "it bounced back"
        );
        assert_eq!(d.feed(true, ms(30), period), Some(false));
        assert_eq!(d.feed(true, ms(70), period), Some(false), "40 ms is not 50");
        assert_eq!(d.feed(true, ms(80), period), Some(true), "held 50 ms");
        let mut instant = Debounce::default();
        instant.feed(false, ms(0), Duration::ZERO);
        assert_eq!(
            instant.feed(true, ms(1), Duration::ZERO),
            Some(true),
            "no debounce"
        );
    }
}
