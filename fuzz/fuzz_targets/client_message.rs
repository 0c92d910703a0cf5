//! `client_message`: a WebSocket text payload through the command parser
//! the socket task calls, then through the hub's access rules, as an agent
//! with and without rights. Nothing may panic; echoed `ref` and `data` are
//! valid JSON; every reply is a JSON object. (JSON as RFC 8259 has it:
//! numbers beyond f64, such as `1E400`, are valid and echoed as written.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use tessera::hub::{self, Hub, Levels, Offer, Outbox, Rights};
use tessera::protocol::{self, Command};

/// A socket's queue as the hub holds it: a cheap handle (subscriptions
/// carry a clone of their socket's outbox).
#[derive(Default, Clone)]
struct Sink(Rc<RefCell<VecDeque<hub::Frame>>>);
impl Outbox for Sink {
    fn offer(&self, m: &hub::Frame) -> Offer {
        self.0.borrow_mut().push_back(m.clone());
        Offer::Queued
    }
    fn resume(&self, ch: &str, after: u64, rejoined: bool, head: hub::Frame, replay: Vec<(u64, hub::Frame)>) {
        hub::splice_resume(&mut self.0.borrow_mut(), ch, after, rejoined, head, replay)
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
    hub.join(1, agent.clone(), Sink::default());
    hub.join(2, hq.clone(), Sink::default());
    // Some history to replay.
    let one = json("1");
    for ch in ["ops", "team.a", "@agent-7"] {
        let _ = hub.publish(&hq, ch, one, 0);
    }
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
                Command::Subscribe { channel: c, since } => {
                    let a = hub.subscribe_since(1, &c, since.as_ref(), r, 0);
                    let b = hub.subscribe_since(2, &c, since.as_ref(), r, 0);
                    assert_eq!(a.is_ok(), hub::may_subscribe(&agent, &c, hub.levels()).is_ok());
                    if c.starts_with('@') && c != "@hq" {
                        assert!(b.is_err(), "personal channels are private");
                    }
                    // What was queued: the reply first, then this channel's
                    // messages in strictly rising order.
                    if let (Ok(s), Some(q)) = (&a, hub.outbox(1)) {
                        let q = q.0.borrow();
                        let texts: Vec<&str> = q.iter().map(|f| f.as_str()).collect();
                        let head = texts.iter().position(|t| t.starts_with(r#"{"type":"subscribed""#));
                        let head = head.expect("a subscribed reply");
                        json_object(texts[head]);
                        let ids: Vec<u64> = texts[head + 1..]
                            .iter()
                            .filter_map(|t| protocol::message_position(t))
                            .map(|(ch, id)| {
                                assert_eq!(ch, c);
                                id
                            })
                            .collect();
                        assert_eq!(ids.len(), s.replayed);
                        assert!(ids.windows(2).all(|w| w[0] < w[1]));
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
                    let m = protocol::message(&channel, 1, 0, "hq", &data);
                    json_object(&m);
                    if hub::channel_name_ok(&channel) {
                        assert_eq!(protocol::message_position(&m), Some((channel.as_str(), 1)));
                    }
                }
                Command::Presence(c) => {
                    // SPEC §13: answered exactly when the asker may read it.
                    let p = hub.presence(1, &c);
                    assert_eq!(p.is_ok(), hub::may_subscribe(&agent, &c, hub.levels()).is_ok());
                    if let Ok(subs) = p {
                        assert!(subs.windows(2).all(|w| w[0] < w[1]), "sorted, distinct");
                        json_object(&protocol::presence(&c, &subs, r));
                    }
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
