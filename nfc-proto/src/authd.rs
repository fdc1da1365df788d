//! The authd line protocol (TCP 902): banner, ticket or credentials, and
//! the proxy request that hands the connection to the NFC service.
//!
//! VDDK 8's order, from the public traces: the server's plaintext banner,
//! TLS, then `SESSION <ticket>` (no reply) and `BANNER ` (trailing space;
//! reply: the `220` banner line) written back to back,
//! `THUMBPRINT_SHA2 PlainText` (reply: `200 <SHA-256 thumbprint>`), and
//! `PROXY <service>` where the service is the ticket's (`vpxa-nfc` from
//! vCenter, `nfc` from a bare ESXi host) with `ssl` appended for nbdssl
//! ([`proxy_service`]); reply `200 Connect ha-nfc[ssl]`.
//!
//! ```
//! use nfc_proto::authd::{self, Command, Reply};
//! let mut wire = Vec::new();
//! authd::push_command(&mut wire, &Command::Session("52a0…".into()));
//! authd::push_command(&mut wire, &Command::Proxy("vpxa-nfc".into()));
//! let (line, n) = authd::take_line(&wire)?.unwrap();
//! assert_eq!(authd::parse_command(&line), Command::Session("52a0…".into()));
//! assert_eq!(authd::parse_reply("200 Connect ha-nfc")?, Reply { code: 200, text: "Connect ha-nfc".into() });
//! # let _ = n;
//! # Ok::<(), nfc_proto::Error>(())
//! ```

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::{Error, Result};

/// Longest line accepted.
pub const MAX_LINE: usize = 4096;
/// The banner an authd server greets with.
pub const BANNER: &str = "220 VMware Authentication Daemon Version 1.10: SSL Required, ServerDaemonProtocol:SOAP, MKSDisplayProtocol:VNC , VMXARGS supported, NFCSSL supported/t, SHA256 supported";
/// The service a vCenter ticket names.
pub const SERVICE_VCENTER: &str = "vpxa-nfc";
/// The service a bare ESXi host's ticket names.
pub const SERVICE_ESXI: &str = "nfc";
/// The only argument VDDK sends with `THUMBPRINT_SHA2`.
pub const THUMBPRINT_PLAINTEXT: &str = "PlainText";

/// The `PROXY` argument for a ticket's service: the service itself for
/// nbd, with `ssl` appended for nbdssl.
pub fn proxy_service(ticket_service: &str, ssl: bool) -> String {
    if ssl {
        format!("{ticket_service}ssl")
    } else {
        ticket_service.to_string()
    }
}

/// The `200` reply to `PROXY` for nbd or nbdssl.
pub fn proxy_reply(ssl: bool) -> &'static str {
    if ssl {
        "Connect ha-nfcssl"
    } else {
        "Connect ha-nfc"
    }
}

/// A client command.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// `SESSION <ticket>` (no reply).
    Session(String),
    /// `PROXY <service>`.
    Proxy(String),
    /// `BANNER ` (VDDK 8).
    Banner,
    /// `THUMBPRINT_SHA2 PlainText` (VDDK 8): ask for the SHA-256 thumbprint.
    ThumbprintSha2(String),
    /// `USER <name>`.
    User(String),
    /// `PASS <password>`.
    Pass(String),
    /// Anything else.
    Other(String),
}

impl core::fmt::Debug for Command {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Command::Session(_) => f.write_str("Session(***)"),
            Command::Pass(_) => f.write_str("Pass(***)"),
            Command::Proxy(s) => write!(f, "Proxy({s:?})"),
            Command::Banner => f.write_str("Banner"),
            Command::ThumbprintSha2(s) => write!(f, "ThumbprintSha2({s:?})"),
            Command::User(s) => write!(f, "User({s:?})"),
            Command::Other(s) => write!(f, "Other({s:?})"),
        }
    }
}

/// A server reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// `200`, `220`, `230`, `331`, `530`, ...
    pub code: u16,
    /// The rest of the line.
    pub text: String,
}

/// Takes one CRLF- (or LF-) terminated line from the start of `buf`.
/// `None` when no full line is there yet; an error past [`MAX_LINE`].
pub fn take_line(buf: &[u8]) -> Result<Option<(String, usize)>> {
    match buf.iter().take(MAX_LINE + 1).position(|&b| b == b'\n') {
        Some(i) => {
            let line = &buf[..i];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let s = core::str::from_utf8(line).map_err(|_| Error::NotUtf8("authd line"))?;
            Ok(Some((s.to_string(), i + 1)))
        }
        None if buf.len() > MAX_LINE => Err(Error::TooLarge {
            what: "authd line",
            len: buf.len() as u64,
            cap: MAX_LINE as u64,
        }),
        None => Ok(None),
    }
}

/// Parses a client command line.
pub fn parse_command(line: &str) -> Command {
    let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
    match verb {
        "SESSION" => Command::Session(arg.trim().to_string()),
        "PROXY" => Command::Proxy(arg.trim().to_string()),
        "BANNER" => Command::Banner,
        "THUMBPRINT_SHA2" => Command::ThumbprintSha2(arg.trim().to_string()),
        "USER" => Command::User(arg.trim().to_string()),
        "PASS" => Command::Pass(arg.to_string()),
        _ => Command::Other(line.to_string()),
    }
}

/// Appends a command line.
pub fn push_command(out: &mut Vec<u8>, c: &Command) {
    let line = match c {
        Command::Session(t) => format!("SESSION {t}"),
        Command::Proxy(s) => format!("PROXY {s}"),
        Command::Banner => "BANNER ".to_string(),
        Command::ThumbprintSha2(s) => format!("THUMBPRINT_SHA2 {s}"),
        Command::User(u) => format!("USER {u}"),
        Command::Pass(p) => format!("PASS {p}"),
        Command::Other(o) => o.clone(),
    };
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Parses a reply line `NNN text`.
pub fn parse_reply(line: &str) -> Result<Reply> {
    let (code, text) = line.split_once(' ').unwrap_or((line, ""));
    let code: u16 = code.parse().map_err(|_| {
        Error::Authd(format!(
            "not a reply: {}",
            line.chars().take(80).collect::<String>()
        ))
    })?;
    if !(100..600).contains(&code) {
        return Err(Error::Authd(format!("reply code {code} out of range")));
    }
    Ok(Reply {
        code,
        text: text.to_string(),
    })
}

/// Appends a reply line.
pub fn push_reply(out: &mut Vec<u8>, code: u16, text: &str) {
    out.extend_from_slice(format!("{code} {text}\r\n").as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn lines() {
        assert_eq!(take_line(b"abc").unwrap(), None);
        assert_eq!(take_line(b"abc\r\ndef").unwrap(), Some(("abc".into(), 5)));
        assert!(take_line(&vec![b'a'; MAX_LINE + 2]).is_err());
        assert!(take_line(b"\xff\n").is_err());
        assert_eq!(parse_command("PASS a b "), Command::Pass("a b ".into()));
        assert_eq!(format!("{:?}", Command::Pass("secret".into())), "Pass(***)");
        assert!(parse_reply("hello").is_err());
        assert!(parse_reply("999 x").is_err());
        assert_eq!(parse_reply(BANNER).unwrap().code, 220);
        assert_eq!(parse_command("BANNER "), Command::Banner);
        assert_eq!(proxy_service("nfc", true), "nfcssl");
        assert_eq!(proxy_service("vpxa-nfc", false), "vpxa-nfc");
    }
}
