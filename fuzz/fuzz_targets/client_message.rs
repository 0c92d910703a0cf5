//! `client_message`: a WebSocket text payload through the command parser
//! the socket task calls, then through the hub's access rules, as an agent
//! with and without rights. Nothing may panic; echoed `ref` and `data` are
//! valid JSON; every reply is a JSON object. (JSON as RFC 8259 has it:
//! numbers beyond f64, such as `1E400`, are valid and echoed as written.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use tessera::hub::{self, Hub, Levels, Outbox, Rights};
use tessera::protocol::{self, Command};

struct Sink;
impl Outbox for Sink {
    fn offer(&self, _: &hub::Frame) -> bool {
        true
    }
}

fn json(s: &str) -> &RawValue {
    serde_json::from_str::<&RawValue>(s).expect("valid JSON")
}

fn json_object(s: &str) {
    assert!(json(s).get().starts_with('{'), "replies are JSON objects");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let levels = Levels(
        [("ops".to_string(), 1), ("briefing".to_string(), 3)]
            .into_iter()
            .collect(),
    );
    let mut hub: Hub<Sink> = Hub::new(levels);
    let agent = Rights {
        sub: "agent-7".into(),
        clearance: 2,
        channels: Some(vec!["ops".into(), "team.*".into()]),
        publish: false,
    };
    let hq = Rights {
        sub: "hq".into(),
        clearance: 5,
        channels: None,
        publish: true,
    };
    hub.join(1, agent.clone(), Sink);
    hub.join(2, hq.clone(), Sink);
    match protocol::parse_client(text) {
        Err(bad) => {
            if let Some(r) = &bad.reference {
                json(r.get());
            }
            json_object(&protocol::error("bad_message", bad.message, bad.reference.as_deref()));
        }
        Ok(m) => {
            let r: Option<&RawValue> = m.reference.as_deref();
            match m.command {
                Command::Subscribe(c) => {
                    let a = hub.subscribe(1, &c);
                    let b = hub.subscribe(2, &c);
                    assert_eq!(a.is_ok(), hub::may_subscribe(&agent, &c, hub.levels()).is_ok());
                    if c.starts_with('@') && c != "@hq" {
                        assert!(b.is_err(), "personal channels are private");
                    }
                    let _ = hub.unsubscribe(1, &c);
                }
                Command::Unsubscribe(c) => {
                    let _ = hub.unsubscribe(1, &c);
                }
                Command::Publish { channel, data } => {
                    json(data.get());
                    assert!(
                        hub.publish(&agent, &channel, &data, 0).is_err(),
                        "agent-7 may not publish"
                    );
                    if let Ok(p) = hub.publish(&hq, &channel, &data, 0) {
                        assert!(p.id >= 1);
                    }
                    json_object(&protocol::message(&channel, 1, 0, "hq", &data));
                }
                Command::Refresh(_) | Command::Ping => {}
            }
            json_object(
                &protocol::Reply {
                    kind: "pong",
                    reference: r,
                    ..protocol::Reply::default()
                }
                .to_json(),
            );
        }
    }
});
