//! WebSocket messages (SPEC §4.3), sans-IO: client text frames to
//! [`Command`]s, and the server's JSON replies and pushes.
//!
//! `data` and `ref` are kept as raw JSON text: they are echoed byte for byte
//! and never re-encoded.
//!
//! ```
//! use tessera::protocol::{parse_client, Command};
//! let m = parse_client(r#"{"type":"subscribe","channel":"ops","ref":7}"#).unwrap();
//! assert!(matches!(m.command, Command::Subscribe(ref c) if c == "ops"));
//! assert_eq!(m.reference.unwrap().get(), "7");
//! ```

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A client command.
#[derive(Debug)]
pub enum Command {
    Subscribe(String),
    Unsubscribe(String),
    Publish { channel: String, data: Box<RawValue> },
    Refresh(String),
    Ping,
}

/// A parsed client message: the command and its optional `ref`.
#[derive(Debug)]
pub struct ClientMessage {
    pub command: Command,
    pub reference: Option<Box<RawValue>>,
}

/// A message that is not a valid command (`bad_message`), with the `ref`
/// when one could be read.
#[derive(Debug)]
pub struct BadMessage {
    pub reference: Option<Box<RawValue>>,
    pub message: &'static str,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow, default)]
    reference: Option<&'a RawValue>,
}

fn string(raw: Option<&RawValue>) -> Option<String> {
    serde_json::from_str::<String>(raw?.get()).ok()
}

/// Parses one client text frame.
pub fn parse_client(text: &str) -> Result<ClientMessage, BadMessage> {
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|_| BadMessage {
        reference: None,
        message: "not a JSON object with known members",
    })?;
    let reference = wire.reference.map(RawValue::to_owned);
    let bad = |message| BadMessage {
        reference: reference.clone(),
        message,
    };
    let command = match string(wire.kind).as_deref() {
        Some("subscribe") => Command::Subscribe(string(wire.channel).ok_or_else(|| bad("channel must be a string"))?),
        Some("unsubscribe") => {
            Command::Unsubscribe(string(wire.channel).ok_or_else(|| bad("channel must be a string"))?)
        }
        Some("publish") => Command::Publish {
            channel: string(wire.channel).ok_or_else(|| bad("channel must be a string"))?,
            data: wire
                .data
                .map(RawValue::to_owned)
                .ok_or_else(|| bad("publish needs data"))?,
        },
        Some("refresh") => Command::Refresh(string(wire.token).ok_or_else(|| bad("token must be a string"))?),
        Some("ping") => Command::Ping,
        _ => return Err(bad("unknown message type")),
    };
    Ok(ClientMessage { command, reference })
}

/// A server reply or notice. Only the fields set are written.
#[derive(Serialize, Default)]
pub struct Reply<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a RawValue>,
}

impl Reply<'_> {
    /// The JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `{"type":"error","code":…,"message":…}` with the request's `ref`.
pub fn error(code: &str, message: &str, reference: Option<&RawValue>) -> String {
    Reply {
        kind: "error",
        code: Some(code),
        message: Some(message),
        reference,
        ..Reply::default()
    }
    .to_json()
}

/// The first message on a socket.
pub fn welcome(sub: &str, clearance: u32, expires_at: u64, server: &str) -> String {
    #[derive(Serialize)]
    struct Welcome<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        sub: &'a str,
        clearance: u32,
        expires_at: u64,
        server: &'a str,
    }
    serde_json::to_string(&Welcome {
        kind: "welcome",
        sub,
        clearance,
        expires_at,
        server,
    })
    .unwrap_or_default()
}

/// A mission update, serialised once and queued to every subscriber.
pub fn message(channel: &str, id: u64, ts_ms: u64, from: &str, data: &RawValue) -> String {
    #[derive(Serialize)]
    struct Message<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        channel: &'a str,
        id: u64,
        ts: u64,
        from: &'a str,
        data: &'a RawValue,
    }
    serde_json::to_string(&Message {
        kind: "message",
        channel,
        id,
        ts: ts_ms,
        from,
        data,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec4_3_every_command() {
        let p = |s: &str| parse_client(s).map(|m| m.command);
        assert!(matches!(p(r#"{"type":"unsubscribe","channel":"a"}"#), Ok(Command::Unsubscribe(c)) if c == "a"));
        assert!(matches!(p(r#"{"type":"ping"}"#), Ok(Command::Ping)));
        assert!(matches!(p(r#"{"type":"refresh","token":"t"}"#), Ok(Command::Refresh(t)) if t == "t"));
        match p(r#"{"type":"publish","channel":"c","data":{"x":[1, 2]}}"#) {
            Ok(Command::Publish { channel, data }) => {
                assert_eq!(channel, "c");
                assert_eq!(data.get(), r#"{"x":[1, 2]}"#);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn spec4_3_bad_message_keeps_ref() {
        let e = parse_client(r#"{"type":"dance","ref":"r1"}"#).unwrap_err();
        assert_eq!(e.reference.unwrap().get(), r#""r1""#);
        assert!(parse_client("not json").unwrap_err().reference.is_none());
        assert!(parse_client(r#"{"type":"subscribe","channel":5}"#).is_err());
        assert!(parse_client(r#"{"type":"publish","channel":"c"}"#).is_err());
        assert!(parse_client(r#"[1]"#).is_err());
        assert!(parse_client(r#"{"type":"ping","type":"ping"}"#).is_err());
    }

    #[test]
    fn replies_render_only_set_fields() {
        let r = RawValue::from_string("42".into()).unwrap();
        assert_eq!(
            Reply {
                kind: "subscribed",
                channel: Some("ops"),
                reference: Some(&r),
                ..Reply::default()
            }
            .to_json(),
            r#"{"type":"subscribed","channel":"ops","ref":42}"#
        );
        assert_eq!(
            error("forbidden", "no", None),
            r#"{"type":"error","code":"forbidden","message":"no"}"#
        );
        let d = RawValue::from_string("[true]".into()).unwrap();
        assert_eq!(
            message("ops", 3, 1000, "hq", &d),
            r#"{"type":"message","channel":"ops","id":3,"ts":1000,"from":"hq","data":[true]}"#
        );
    }
}
