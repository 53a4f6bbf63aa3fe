//! Home Assistant MQTT discovery: one retained `<discovery_prefix>/<component>/
//! <gateway>_<device>_<point>/config` message per point, so that a Home Assistant on the
//! same broker finds every point without configuration. The component follows from the
//! point: a writable switch is a `switch`, a writable number a `number`, the rest
//! `sensor`s. Formatting only: `app` publishes them (again when Home Assistant's
//! `<discovery_prefix>/status` says `online`).

use crate::config::{Device, Point, SimWave};

/// One discovery message: its topic and JSON payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    pub topic: String,
    pub payload: String,
}

/// The discovery messages for every point of `device`.
pub fn messages(
    discovery_prefix: &str,
    gateway: &str,
    prefix: &str,
    device: &Device,
) -> Vec<Discovery> {
    device
        .points
        .iter()
        .map(|point| message(discovery_prefix, gateway, prefix, device, point))
        .collect()
}

fn message(
    discovery_prefix: &str,
    gateway: &str,
    prefix: &str,
    device: &Device,
    point: &Point,
) -> Discovery {
    let switch = matches!(point.sim, Some(SimWave::Switch));
    let component = match (point.writable, switch) {
        (true, true) => "switch",
        (true, false) => "number",
        (false, _) => "sensor",
    };
    let object_id = format!("{gateway}_{}_{}", device.id, point.id);
    let state_topic = format!("{prefix}/{}/{}", device.id, point.id);
    let mut config = serde_json::json!({
        "name": point.id,
        "unique_id": object_id,
        "object_id": object_id,
        "state_topic": state_topic,
        "value_template": if point.raw_payload { "{{ value }}" } else { "{{ value_json.value }}" },
        "availability": [
            {"topic": format!("{prefix}/availability")},
            {"topic": format!("{prefix}/{}/availability", device.id)},
        ],
        "availability_mode": "all",
        "device": {
            "identifiers": [format!("{gateway}_{}", device.id)],
            "name": device.id,
            "manufacturer": "fieldgate",
            "model": "sim",
            "via_device": gateway,
        },
    });
    if let Some(map) = config.as_object_mut() {
        if point.writable {
            map.insert("command_topic".into(), format!("{state_topic}/set").into());
        }
        if switch {
            // The telemetry says true/false; commands take on/off.
            map.insert("payload_on".into(), "on".into());
            map.insert("payload_off".into(), "off".into());
            map.insert("state_on".into(), "True".into());
            map.insert("state_off".into(), "False".into());
        }
        if component == "number" {
            map.insert("min".into(), point.min.unwrap_or(-1e9).into());
            map.insert("max".into(), point.max.unwrap_or(1e9).into());
            map.insert("mode".into(), "box".into());
        }
        if let Some(unit) = &point.unit {
            map.insert("unit_of_measurement".into(), unit.clone().into());
        }
        if let Some(class) = &point.device_class {
            map.insert("device_class".into(), class.clone().into());
        }
    }
    Discovery {
        topic: format!("{discovery_prefix}/{component}/{object_id}/config"),
        payload: config.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_config;

    #[test]
    fn each_point_gets_the_component_its_kind_calls_for() {
        let config = default_config().unwrap();
        let found = messages(
            "homeassistant",
            "fieldgate",
            "fieldgate/fieldgate",
            &config.devices[0],
        );
        let topics: Vec<&str> = found.iter().map(|d| d.topic.as_str()).collect();
        assert_eq!(
            topics,
            [
                "homeassistant/sensor/fieldgate_demo_temperature/config",
                "homeassistant/sensor/fieldgate_demo_counter/config",
                "homeassistant/switch/fieldgate_demo_switch/config",
            ]
        );
        let switch: serde_json::Value = serde_json::from_str(&found[2].payload).unwrap();
        assert_eq!(
            switch["command_topic"],
            "fieldgate/fieldgate/demo/switch/set"
        );
        assert_eq!(switch["state_topic"], "fieldgate/fieldgate/demo/switch");
        let temperature: serde_json::Value = serde_json::from_str(&found[0].payload).unwrap();
        assert_eq!(temperature["unit_of_measurement"], "°C");
        assert!(temperature.get("command_topic").is_none());
    }
}
