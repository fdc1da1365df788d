//! Classic NFC messages: fixed 264-byte little-endian frames, `u32 type`
//! at offset 0, and the handshake VDDK 8 runs with them before any AIO
//! frame.
//!
//! The handshake, as the public traces show it (offsets from the start
//! of the frame):
//!
//! | step | dir | type | fields |
//! |---|---|---|---|
//! | 1 | C→S | 43 | ASCII `PlainText` at 4 (even under nbdssl) |
//! | 2 | C→S | 33 | none |
//! | 3 | S→C | 36 | u32 `1` at 16 (position unconfirmed: clients ignore it) |
//! | 4 | C→S | 51 | version (11) at 4 |
//! | 5 | S→C | 51 | the server's version at 4 (11 on ESXi 8; VDDK needs ≥ 3) |
//! | 6 | C→S | 54 | name length at 4, op length at 8; then the raw strings (`vddk`, `nbdmode`), no frame, no NUL |
//! | 7 | C→S | 55 | features at 4 (3) |
//! | 8 | C→S | 52 | none |
//! | 9 | S→C | 52 | none: AIO starts |
//!
//! At the end the client sends type 4 (session complete) after the AIO
//! CLOSE_SESSION; no reply is documented.
//!
//! Both sides are state machines: feed received bytes to `handle_input`
//! (one message per call; 0 consumed means more input is needed), take
//! what is due with `poll_output`, stop when `is_done`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::{put_u32, u32_at, Error, Result};

/// Length of every classic frame.
pub const FRAME_LEN: usize = 264;
/// Session complete: the last message of a connection.
pub const SESSION_COMPLETE: u32 = 4;
/// Session parameters (client).
pub const SESSION_PARAMS: u32 = 33;
/// Session parameters reply (server).
pub const SESSION_PARAMS_REPLY: u32 = 36;
/// The authentication mode, `PlainText` (client; the sources disagree on
/// this type's name, so it goes by number).
pub const AUTH_MODE: u32 = 43;
/// Version exchange (both).
pub const VERSION: u32 = 51;
/// Open the AIO session (both).
pub const AIO_SESSION_OPEN: u32 = 52;
/// Connection data: lengths of the two raw strings that follow.
pub const CONNECTION_DATA: u32 = 54;
/// Session features (client).
pub const SESSION_FEATURES: u32 = 55;

/// The authentication mode VDDK sends.
pub const PLAINTEXT: &str = "PlainText";
/// The NFC version ESXi 8 and VDDK 8 exchange.
pub const VERSION_ESXI8: u32 = 11;
/// The lowest server version VDDK accepts for connection data.
pub const MIN_SERVER_VERSION: u32 = 3;
/// Longest raw string after a type-54 message.
pub const MAX_RAW: u32 = 256;
/// Longest authentication mode accepted.
pub const MAX_MODE: usize = 64;

/// A classic message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// 43: the authentication mode (`PlainText`).
    AuthMode(String),
    /// 33: session parameters.
    SessionParams,
    /// 36: their reply (`1` at offset 16).
    SessionParamsReply,
    /// 51: a version.
    Version(u32),
    /// 54: the lengths of the name and op strings that follow raw.
    ConnectionData {
        /// Length of the client name (`vddk`).
        name_len: u32,
        /// Length of the op name (`nbdmode`).
        op_len: u32,
    },
    /// 55: session features (3: interruption | switch).
    Features(u32),
    /// 52: open the AIO session.
    AioSessionOpen,
    /// 4: session complete.
    SessionComplete,
}

impl Message {
    /// Its type.
    pub fn kind(&self) -> u32 {
        match self {
            Message::AuthMode(_) => AUTH_MODE,
            Message::SessionParams => SESSION_PARAMS,
            Message::SessionParamsReply => SESSION_PARAMS_REPLY,
            Message::Version(_) => VERSION,
            Message::ConnectionData { .. } => CONNECTION_DATA,
            Message::Features(_) => SESSION_FEATURES,
            Message::AioSessionOpen => AIO_SESSION_OPEN,
            Message::SessionComplete => SESSION_COMPLETE,
        }
    }

    /// Appends the 264-byte frame.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let mut f = [0u8; FRAME_LEN];
        put_u32(&mut f, 0, self.kind());
        match self {
            Message::AuthMode(m) => {
                let b = &m.as_bytes()[..m.len().min(MAX_MODE)];
                f[4..4 + b.len()].copy_from_slice(b);
            }
            Message::SessionParamsReply => put_u32(&mut f, 16, 1),
            Message::Version(v) | Message::Features(v) => put_u32(&mut f, 4, *v),
            Message::ConnectionData { name_len, op_len } => {
                put_u32(&mut f, 4, *name_len);
                put_u32(&mut f, 8, *op_len);
            }
            Message::SessionParams | Message::AioSessionOpen | Message::SessionComplete => {}
        }
        out.extend_from_slice(&f);
    }

    /// Parses a frame. Types outside the handshake are
    /// [`Error::UnexpectedType`].
    pub fn parse(f: &[u8; FRAME_LEN]) -> Result<Self> {
        let kind = u32_at(f, 0);
        Ok(match kind {
            AUTH_MODE => {
                let body = &f[4..4 + MAX_MODE];
                let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                let mode = core::str::from_utf8(&body[..end])
                    .map_err(|_| Error::NotUtf8("authentication mode"))?;
                Message::AuthMode(mode.to_string())
            }
            SESSION_PARAMS => Message::SessionParams,
            SESSION_PARAMS_REPLY => Message::SessionParamsReply,
            VERSION => Message::Version(u32_at(f, 4)),
            CONNECTION_DATA => Message::ConnectionData {
                name_len: u32_at(f, 4),
                op_len: u32_at(f, 8),
            },
            SESSION_FEATURES => Message::Features(u32_at(f, 4)),
            AIO_SESSION_OPEN => Message::AioSessionOpen,
            SESSION_COMPLETE => Message::SessionComplete,
            other => return Err(Error::UnexpectedType(other)),
        })
    }
}

/// Takes one frame from the start of `buf` (`None`: fewer than 264 bytes).
pub fn take_frame(buf: &[u8]) -> Result<Option<Message>> {
    match buf.first_chunk::<FRAME_LEN>() {
        Some(f) => Message::parse(f).map(Some),
        None => Ok(None),
    }
}

/// What a client says about itself in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// NFC version (51).
    pub version: u32,
    /// Client name after the type-54 message.
    pub name: String,
    /// Op name after it.
    pub op: String,
    /// Session features (55).
    pub features: u32,
}

impl ClientHello {
    /// VDDK 8's values: version 11, `vddk`, `nbdmode`, features 3.
    pub fn vddk() -> Self {
        Self {
            version: VERSION_ESXI8,
            name: "vddk".into(),
            op: "nbdmode".into(),
            features: 3,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientState {
    SendHello,
    AwaitParams,
    SendVersion,
    AwaitVersion,
    SendRest,
    AwaitAio,
    Done,
}

/// The client side of the handshake.
///
/// Call order: [`poll_output`](Self::poll_output) (send what it appended),
/// then [`handle_input`](Self::handle_input) with received bytes until it
/// consumes nothing, and again until [`is_done`](Self::is_done). The
/// client sends 43 and 33, waits for 36, sends 51, waits for 51, sends
/// 54, the raw strings, 55 and 52, and waits for 52.
#[derive(Debug)]
pub struct ClientHandshake {
    hello: ClientHello,
    state: ClientState,
    server_version: Option<u32>,
}

impl ClientHandshake {
    /// A handshake saying `hello`.
    pub fn new(hello: ClientHello) -> Self {
        Self {
            hello,
            state: ClientState::SendHello,
            server_version: None,
        }
    }

    /// A handshake with VDDK 8's values.
    pub fn vddk() -> Self {
        Self::new(ClientHello::vddk())
    }

    /// Appends what is due now; returns the bytes appended.
    pub fn poll_output(&mut self, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        match self.state {
            ClientState::SendHello => {
                Message::AuthMode(PLAINTEXT.into()).encode(out);
                Message::SessionParams.encode(out);
                self.state = ClientState::AwaitParams;
            }
            ClientState::SendVersion => {
                Message::Version(self.hello.version).encode(out);
                self.state = ClientState::AwaitVersion;
            }
            ClientState::SendRest => {
                Message::ConnectionData {
                    name_len: self.hello.name.len() as u32,
                    op_len: self.hello.op.len() as u32,
                }
                .encode(out);
                out.extend_from_slice(self.hello.name.as_bytes());
                out.extend_from_slice(self.hello.op.as_bytes());
                Message::Features(self.hello.features).encode(out);
                Message::AioSessionOpen.encode(out);
                self.state = ClientState::AwaitAio;
            }
            _ => {}
        }
        out.len() - start
    }

    /// Handles at most one server message; returns bytes consumed (0:
    /// more input needed, or nothing expected now).
    pub fn handle_input(&mut self, input: &[u8]) -> Result<usize> {
        let expected = match self.state {
            ClientState::AwaitParams => SESSION_PARAMS_REPLY,
            ClientState::AwaitVersion => VERSION,
            ClientState::AwaitAio => AIO_SESSION_OPEN,
            _ => return Ok(0),
        };
        let Some(msg) = take_frame(input)? else {
            return Ok(0);
        };
        if msg.kind() != expected {
            return Err(Error::Handshake {
                expected,
                got: msg.kind(),
            });
        }
        self.state = match msg {
            Message::SessionParamsReply => ClientState::SendVersion,
            Message::Version(v) => {
                if v < MIN_SERVER_VERSION {
                    return Err(Error::BadField {
                        what: "server NFC version",
                        value: u64::from(v),
                    });
                }
                self.server_version = Some(v);
                ClientState::SendRest
            }
            _ => ClientState::Done,
        };
        Ok(FRAME_LEN)
    }

    /// The handshake is over: AIO frames may follow.
    pub fn is_done(&self) -> bool {
        self.state == ClientState::Done
    }

    /// The server's version, once received.
    pub fn server_version(&self) -> Option<u32> {
        self.server_version
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerState {
    AwaitAuth,
    AwaitParams,
    AwaitVersion,
    AwaitConnectionData,
    AwaitRaw { name_len: u32, op_len: u32 },
    AwaitFeatures,
    AwaitAio,
    Done,
}

/// The server side of the handshake, strict: each message must come in
/// VDDK's order (AIO frames before the type-52 exchange are refused).
///
/// Call order: [`handle_input`](Self::handle_input) with received bytes
/// until it consumes nothing, [`poll_output`](Self::poll_output) to send
/// the replies, until [`is_done`](Self::is_done).
#[derive(Debug)]
pub struct ServerHandshake {
    version: u32,
    state: ServerState,
    out: Vec<u8>,
    client: Option<ClientHello>,
    client_version: u32,
    features: u32,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new(VERSION_ESXI8)
    }
}

impl ServerHandshake {
    /// A server announcing `version`.
    pub fn new(version: u32) -> Self {
        Self {
            version,
            state: ServerState::AwaitAuth,
            out: Vec::new(),
            client: None,
            client_version: 0,
            features: 0,
        }
    }

    /// Handles at most one client message (a frame, or the raw strings
    /// after 54); returns bytes consumed (0: more input needed, or the
    /// handshake is done).
    pub fn handle_input(&mut self, input: &[u8]) -> Result<usize> {
        if let ServerState::AwaitRaw { name_len, op_len } = self.state {
            let (n, o) = (name_len as usize, op_len as usize);
            let Some(raw) = input.get(..n + o) else {
                return Ok(0);
            };
            let text = |b: &[u8], what| {
                if b.iter().all(|c| c.is_ascii_graphic()) {
                    Ok(String::from_utf8_lossy(b).into_owned())
                } else {
                    Err(Error::NotUtf8(what))
                }
            };
            self.client = Some(ClientHello {
                version: self.client_version,
                name: text(&raw[..n], "client name")?,
                op: text(&raw[n..], "op name")?,
                features: 0,
            });
            self.state = ServerState::AwaitFeatures;
            return Ok(n + o);
        }
        let expected = match self.state {
            ServerState::AwaitAuth => AUTH_MODE,
            ServerState::AwaitParams => SESSION_PARAMS,
            ServerState::AwaitVersion => VERSION,
            ServerState::AwaitConnectionData => CONNECTION_DATA,
            ServerState::AwaitFeatures => SESSION_FEATURES,
            ServerState::AwaitAio => AIO_SESSION_OPEN,
            // Once done, nothing more is the handshake's.
            ServerState::AwaitRaw { .. } | ServerState::Done => return Ok(0),
        };
        let Some(f) = input.first_chunk::<FRAME_LEN>() else {
            return Ok(0);
        };
        let got = u32_at(f, 0);
        if got != expected {
            return Err(Error::Handshake { expected, got });
        }
        self.state = match Message::parse(f)? {
            Message::AuthMode(m) => {
                if m != PLAINTEXT {
                    return Err(Error::BadField {
                        what: "authentication mode",
                        value: m.len() as u64,
                    });
                }
                ServerState::AwaitParams
            }
            Message::SessionParams => {
                Message::SessionParamsReply.encode(&mut self.out);
                ServerState::AwaitVersion
            }
            Message::Version(v) => {
                if v < MIN_SERVER_VERSION {
                    return Err(Error::BadField {
                        what: "client NFC version",
                        value: u64::from(v),
                    });
                }
                self.client_version = v;
                Message::Version(self.version).encode(&mut self.out);
                ServerState::AwaitConnectionData
            }
            Message::ConnectionData { name_len, op_len } => {
                for (what, len) in [("client name", name_len), ("op name", op_len)] {
                    if len == 0 || len > MAX_RAW {
                        return Err(Error::TooLarge {
                            what,
                            len: u64::from(len),
                            cap: u64::from(MAX_RAW),
                        });
                    }
                }
                ServerState::AwaitRaw { name_len, op_len }
            }
            Message::Features(f) => {
                self.features = f;
                if let Some(c) = &mut self.client {
                    c.features = f;
                }
                ServerState::AwaitAio
            }
            _ => {
                Message::AioSessionOpen.encode(&mut self.out);
                ServerState::Done
            }
        };
        Ok(FRAME_LEN)
    }

    /// Appends the replies due; returns the bytes appended.
    pub fn poll_output(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self.out.len();
        out.append(&mut self.out);
        n
    }

    /// The type-52 exchange happened: AIO frames follow.
    pub fn is_done(&self) -> bool {
        self.state == ServerState::Done
    }

    /// What the client said (after the raw strings).
    pub fn client(&self) -> Option<&ClientHello> {
        self.client.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn run(c: &mut ClientHandshake, s: &mut ServerHandshake) -> Result<()> {
        let (mut c2s, mut s2c) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            c.poll_output(&mut c2s);
            loop {
                let n = s.handle_input(&c2s)?;
                if n == 0 {
                    break;
                }
                c2s.drain(..n);
            }
            s.poll_output(&mut s2c);
            loop {
                let n = c.handle_input(&s2c)?;
                if n == 0 {
                    break;
                }
                s2c.drain(..n);
            }
            if c.is_done() {
                break;
            }
        }
        Ok(())
    }

    #[test]
    fn handshake_pair() {
        let (mut c, mut s) = (ClientHandshake::vddk(), ServerHandshake::default());
        run(&mut c, &mut s).unwrap();
        assert!(c.is_done() && s.is_done());
        assert_eq!(c.server_version(), Some(11));
        assert_eq!(s.client(), Some(&ClientHello::vddk()));
    }

    #[test]
    fn server_refuses_drift() {
        // An AIO frame first.
        let mut s = ServerHandshake::default();
        let mut aio = vec![0x7a, 0xda, 0x00, 0xa1];
        aio.resize(FRAME_LEN, 0);
        assert!(matches!(
            s.handle_input(&aio),
            Err(Error::Handshake { expected: 43, .. })
        ));
        // Another mode than PlainText.
        let mut s = ServerHandshake::default();
        let mut f = Vec::new();
        Message::AuthMode("SSL".into()).encode(&mut f);
        assert!(s.handle_input(&f).is_err());
        // Version skipped.
        let mut s = ServerHandshake::default();
        let mut f = Vec::new();
        Message::AuthMode(PLAINTEXT.into()).encode(&mut f);
        Message::SessionParams.encode(&mut f);
        Message::AioSessionOpen.encode(&mut f);
        assert_eq!(s.handle_input(&f).unwrap(), FRAME_LEN);
        assert_eq!(s.handle_input(&f[FRAME_LEN..]).unwrap(), FRAME_LEN);
        assert!(s.handle_input(&f[2 * FRAME_LEN..]).is_err());
        // Raw string lengths capped.
        let mut s = ServerHandshake::default();
        let mut f = Vec::new();
        Message::AuthMode(PLAINTEXT.into()).encode(&mut f);
        Message::SessionParams.encode(&mut f);
        Message::Version(11).encode(&mut f);
        Message::ConnectionData {
            name_len: 1 << 30,
            op_len: 7,
        }
        .encode(&mut f);
        let mut pos = 0;
        let r = loop {
            match s.handle_input(&f[pos..]) {
                Ok(0) => break Ok(()),
                Ok(n) => pos += n,
                Err(e) => break Err(e),
            }
        };
        assert!(matches!(r, Err(Error::TooLarge { .. })));
        // Partial input is a state.
        let mut s = ServerHandshake::default();
        assert_eq!(s.handle_input(&f[..100]).unwrap(), 0);
    }

    #[test]
    fn client_refuses_old_servers() {
        let mut c = ClientHandshake::vddk();
        let mut out = Vec::new();
        c.poll_output(&mut out);
        let mut r = Vec::new();
        Message::SessionParamsReply.encode(&mut r);
        Message::Version(2).encode(&mut r);
        assert_eq!(c.handle_input(&r).unwrap(), FRAME_LEN);
        c.poll_output(&mut out);
        assert!(c.handle_input(&r[FRAME_LEN..]).is_err());
    }
}
