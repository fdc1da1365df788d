//! The server session: handshake, option haggling, transmission.

use alloc::string::String;
use alloc::vec::Vec;

use crate::consts::*;
use crate::wire::{self, Reader};
use crate::{Error, MAX_OPTION_LEN, MAX_PAYLOAD, MAX_STRING};

/// Block size constraints of an export (`NBD_INFO_BLOCK_SIZE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSize {
    /// Minimum block size: a power of two, 1 to 65536. Requests whose
    /// offset or length is not a multiple of it are refused with `EINVAL`.
    pub minimum: u32,
    /// Preferred block size: a power of two, at least `minimum` and 512.
    pub preferred: u32,
    /// Maximum payload: a multiple of `minimum`, at least `preferred`
    /// (clamped to [`MAX_PAYLOAD`]).
    pub maximum: u32,
}

impl Default for BlockSize {
    fn default() -> Self {
        Self {
            minimum: 1,
            preferred: 4096,
            maximum: MAX_PAYLOAD,
        }
    }
}

/// What the session needs to know about one export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportInfo {
    /// Name clients select it by; `""` is the default export.
    pub name: String,
    /// Human-readable description (`NBD_INFO_DESCRIPTION`).
    pub description: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Whether writes, trims and zeroing are allowed.
    pub writable: bool,
    /// Whether `NBD_FLAG_CAN_MULTI_CONN` may be advertised.
    pub multi_conn: bool,
    /// Whether `NBD_FLAG_SEND_FAST_ZERO` is advertised.
    pub fast_zero: bool,
    /// Block size constraints.
    pub block_size: BlockSize,
}

impl ExportInfo {
    /// A read-only export of `size` bytes with default block sizes.
    pub fn new(name: &str, size: u64) -> Self {
        Self {
            name: String::from(name),
            description: None,
            size,
            writable: false,
            multi_conn: false,
            fast_zero: false,
            block_size: BlockSize::default(),
        }
    }

    /// The transmission flags advertised for this export.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        let mut f = TFLAG_HAS_FLAGS | TFLAG_SEND_FLUSH | TFLAG_SEND_FUA;
        if self.writable {
            f |= TFLAG_SEND_TRIM | TFLAG_SEND_WRITE_ZEROES;
            if self.fast_zero {
                f |= TFLAG_SEND_FAST_ZERO;
            }
        } else {
            f |= TFLAG_READ_ONLY;
        }
        if structured {
            f |= TFLAG_SEND_DF;
        }
        if self.multi_conn {
            f |= TFLAG_CAN_MULTI_CONN;
        }
        f
    }

    fn validate(&self, index: usize) -> Result<(), Error> {
        let bad = |field| Err(Error::InvalidExport { index, field });
        let b = self.block_size;
        if self.name.len() > MAX_STRING {
            return bad("name");
        }
        if self
            .description
            .as_ref()
            .is_some_and(|d| d.len() > MAX_STRING)
        {
            return bad("description");
        }
        if !b.minimum.is_power_of_two() || b.minimum > 65536 {
            return bad("block_size.minimum");
        }
        if !b.preferred.is_power_of_two() || b.preferred < b.minimum.max(512) {
            return bad("block_size.preferred");
        }
        let max = b.maximum.min(MAX_PAYLOAD);
        if max < b.preferred || !max.is_multiple_of(b.minimum) {
            return bad("block_size.maximum");
        }
        Ok(())
    }
}

/// Whether TLS is offered, and whether it must be started before anything else.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// `NBD_OPT_STARTTLS` is refused with `NBD_REP_ERR_UNSUP`.
    #[default]
    Disabled,
    /// TLS may be started; plain text is accepted.
    Optional,
    /// Every option but `STARTTLS` and `ABORT` gets `NBD_REP_ERR_TLS_REQD`
    /// (`EXPORT_NAME` closes) until TLS is started.
    Required,
}

/// Configuration of one session.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionConfig {
    /// The exports, looked up by exact name.
    pub exports: Vec<ExportInfo>,
    /// TLS policy.
    pub tls: TlsPolicy,
}

impl SessionConfig {
    /// A configuration with `exports` and TLS disabled.
    pub fn new(exports: Vec<ExportInfo>) -> Self {
        Self {
            exports,
            tls: TlsPolicy::Disabled,
        }
    }
}

/// The outcome of one [`ServerSession::handle_input`] call.
#[derive(Debug)]
pub struct Status<'a> {
    /// Input bytes consumed; drop them before the next call.
    pub consumed: usize,
    /// What the caller must do next.
    pub event: Event<'a>,
}

/// What the caller must do after [`ServerSession::handle_input`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<'a> {
    /// Nothing more can be done with the input: read until at least
    /// `at_least` unconsumed bytes are buffered, then call again.
    /// `at_least` never exceeds `MAX_PAYLOAD + 28`.
    NeedMore {
        /// Unconsumed bytes needed for progress.
        at_least: usize,
    },
    /// Progress was made (maybe output); call again.
    Continue,
    /// Send the output, then wrap the stream in TLS (server side) and keep
    /// calling with the decrypted bytes.
    StartTls,
    /// Negotiation finished: transmission on the export at this index of
    /// [`SessionConfig::exports`] starts.
    Ready {
        /// Index of the selected export.
        export: usize,
    },
    /// A valid request: execute it and answer with one of the `reply_*`
    /// methods. `WRITE` data is borrowed from the input.
    Request(Request<'a>),
    /// The client ended the session (`NBD_OPT_ABORT`, `NBD_CMD_DISC`):
    /// send the output, flush, close.
    Disconnect,
}

/// A validated transmission request.
#[derive(Debug)]
pub struct Request<'a> {
    /// What the reply needs.
    pub reply: ReplyTo,
    /// The command.
    pub command: Command<'a>,
}

/// Identifies the request a reply answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    /// The client's cookie (handle).
    pub cookie: u64,
    /// Command type (`CMD_*`).
    pub command: u16,
    /// Command flags.
    pub flags: u16,
    /// Request offset.
    pub offset: u64,
    /// Request length.
    pub length: u32,
}

/// A command the caller executes. Offsets and lengths are in bounds.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command<'a> {
    /// Read `length` bytes at `offset` (`length <= MAX_PAYLOAD`).
    Read {
        /// Offset.
        offset: u64,
        /// Length, non-zero.
        length: u32,
        /// `NBD_CMD_FLAG_DF`: one content chunk only.
        df: bool,
    },
    /// Write `data` at `offset`.
    Write {
        /// Offset.
        offset: u64,
        /// Payload, non-empty.
        data: &'a [u8],
        /// Force unit access.
        fua: bool,
    },
    /// Flush written data to stable storage.
    Flush,
    /// Discard a range.
    Trim {
        /// Offset.
        offset: u64,
        /// Length, non-zero.
        length: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Write zeroes to a range.
    WriteZeroes {
        /// Offset.
        offset: u64,
        /// Length, non-zero.
        length: u32,
        /// The client allows a hole (`NBD_CMD_FLAG_NO_HOLE` clear).
        may_trim: bool,
        /// Force unit access.
        fua: bool,
        /// `NBD_CMD_FLAG_FAST_ZERO`: answer `ENOTSUP` rather than be slow.
        fast: bool,
    },
    /// Report `base:allocation` for a range.
    BlockStatus {
        /// Offset.
        offset: u64,
        /// Length, non-zero.
        length: u32,
        /// `NBD_CMD_FLAG_REQ_ONE`: one extent only.
        req_one: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Start,
    ClientFlags,
    Options,
    /// Skipping an oversized option's payload; then `NBD_REP_ERR_TOO_BIG`.
    SkipOption {
        option: u32,
        remaining: u32,
    },
    Transmission,
    /// Skipping a refused write's payload (its error reply is sent).
    SkipPayload {
        remaining: u32,
    },
    Closed,
}

/// The server side of one NBD connection.
///
/// Call order: [`handle_input`](Self::handle_input) with the unconsumed
/// client bytes (the first call, with no input, writes the greeting),
/// drop `consumed` bytes, act on the [`Event`], and for each
/// [`Event::Request`] append its answer with [`reply_ok`](Self::reply_ok),
/// [`reply_error`](Self::reply_error), [`reply_read`](Self::reply_read)
/// or [`reply_block_status`](Self::reply_block_status). Send the output
/// buffer whenever convenient (and always before blocking on a read, and
/// before switching to TLS). An `Err` means the connection must close.
///
/// Buffering: the caller holds at most one request, at most
/// `MAX_PAYLOAD + 28` bytes ([`Event::NeedMore::at_least`]) in
/// transmission and [`MAX_OPTION_LEN`]` + 16` during negotiation.
#[derive(Debug)]
pub struct ServerSession {
    config: SessionConfig,
    state: State,
    no_zeroes: bool,
    tls_active: bool,
    structured: bool,
    /// `base:allocation` selected by `SET_META_CONTEXT`, for this export name.
    meta_alloc: Option<String>,
    export: Option<usize>,
}

impl ServerSession {
    /// A session serving `config`; fails if an export is invalid.
    pub fn new(config: SessionConfig) -> Result<Self, Error> {
        for (i, e) in config.exports.iter().enumerate() {
            e.validate(i)?;
        }
        Ok(Self {
            config,
            state: State::Start,
            no_zeroes: false,
            tls_active: false,
            structured: false,
            meta_alloc: None,
            export: None,
        })
    }

    /// The selected export once transmission started.
    pub fn export(&self) -> Option<&ExportInfo> {
        self.export.and_then(|i| self.config.exports.get(i))
    }

    /// Whether structured replies were negotiated.
    pub fn structured(&self) -> bool {
        self.structured
    }

    /// Whether `base:allocation` is active for the selected export.
    pub fn base_allocation(&self) -> bool {
        self.meta_alloc.is_some() && self.export.is_some()
    }

    /// Whether the session is in the transmission phase.
    pub fn in_transmission(&self) -> bool {
        matches!(self.state, State::Transmission | State::SkipPayload { .. })
    }

    /// Whether TLS was started.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Processes client bytes; appends replies to `out`.
    pub fn handle_input<'a>(
        &mut self,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> Result<Status<'a>, Error> {
        let need = |n: usize| {
            Ok(Status {
                consumed: 0,
                event: Event::NeedMore { at_least: n },
            })
        };
        match self.state {
            State::Start => {
                wire::greeting(out, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES);
                self.state = State::ClientFlags;
                Ok(status(0, Event::Continue))
            }
            State::ClientFlags => {
                let Some(flags) = Reader::new(input).u32() else {
                    return need(4);
                };
                if flags & FLAG_C_FIXED_NEWSTYLE == 0
                    || flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0
                {
                    self.state = State::Closed;
                    return Err(Error::ClientFlags { flags });
                }
                self.no_zeroes = flags & FLAG_C_NO_ZEROES != 0;
                self.state = State::Options;
                Ok(status(4, Event::Continue))
            }
            State::Options => self.option(input, out),
            State::SkipOption { option, remaining } => {
                let n = skip(input, remaining);
                let left = remaining - n as u32;
                if left == 0 {
                    wire::option_reply(out, option, REP_ERR_TOO_BIG, b"option too long");
                    self.state = State::Options;
                } else {
                    self.state = State::SkipOption {
                        option,
                        remaining: left,
                    };
                }
                Ok(progress_or_need(n, left))
            }
            State::Transmission => self.request(input, out),
            State::SkipPayload { remaining } => {
                let n = skip(input, remaining);
                let left = remaining - n as u32;
                self.state = if left == 0 {
                    State::Transmission
                } else {
                    State::SkipPayload { remaining: left }
                };
                Ok(progress_or_need(n, left))
            }
            State::Closed => Err(Error::Closed),
        }
    }

    fn option<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> Result<Status<'a>, Error> {
        let mut r = Reader::new(input);
        let (Some(magic), Some(option), Some(len)) = (r.u64(), r.u32(), r.u32()) else {
            return Ok(status(0, Event::NeedMore { at_least: 16 }));
        };
        if magic != IHAVEOPT {
            self.state = State::Closed;
            return Err(Error::OptionMagic { magic });
        }
        if len > MAX_OPTION_LEN {
            if option == OPT_EXPORT_NAME {
                self.state = State::Closed;
                return Err(Error::ExportNameRefused);
            }
            self.state = State::SkipOption {
                option,
                remaining: len,
            };
            return Ok(status(16, Event::Continue));
        }
        let total = 16 + len as usize;
        let Some(data) = r.take(len as usize) else {
            return Ok(status(0, Event::NeedMore { at_least: total }));
        };
        let tls_missing = self.config.tls == TlsPolicy::Required && !self.tls_active;
        if tls_missing && option != OPT_ABORT && option != OPT_STARTTLS {
            if option == OPT_EXPORT_NAME {
                self.state = State::Closed;
                return Err(Error::TlsRequired);
            }
            wire::option_reply(out, option, REP_ERR_TLS_REQD, b"TLS required");
            return Ok(status(total, Event::Continue));
        }
        let event = match option {
            OPT_EXPORT_NAME => {
                let idx = core::str::from_utf8(data)
                    .ok()
                    .and_then(|name| self.find(name));
                let Some(idx) = idx else {
                    self.state = State::Closed;
                    return Err(Error::ExportNameRefused);
                };
                let e = &self.config.exports[idx];
                let flags = e.transmission_flags(self.structured);
                wire::export_name_reply(out, e.size, flags, self.no_zeroes);
                self.enter_transmission(idx);
                Event::Ready { export: idx }
            }
            OPT_ABORT => {
                wire::option_reply(out, option, REP_ACK, &[]);
                self.state = State::Closed;
                Event::Disconnect
            }
            OPT_LIST => {
                if data.is_empty() {
                    for e in &self.config.exports {
                        wire::rep_server(out, &e.name);
                    }
                    wire::option_reply(out, option, REP_ACK, &[]);
                } else {
                    wire::option_reply(out, option, REP_ERR_INVALID, &[]);
                }
                Event::Continue
            }
            OPT_STARTTLS => {
                let reply = if !data.is_empty() || self.tls_active {
                    REP_ERR_INVALID
                } else if self.config.tls == TlsPolicy::Disabled {
                    REP_ERR_UNSUP
                } else {
                    REP_ACK
                };
                wire::option_reply(out, option, reply, &[]);
                if reply == REP_ACK {
                    // Nothing negotiated in clear text survives the upgrade.
                    self.tls_active = true;
                    self.structured = false;
                    self.meta_alloc = None;
                    Event::StartTls
                } else {
                    Event::Continue
                }
            }
            OPT_INFO | OPT_GO => self.info(option, data, out),
            OPT_STRUCTURED_REPLY => {
                if data.is_empty() {
                    self.structured = true;
                    wire::option_reply(out, option, REP_ACK, &[]);
                } else {
                    wire::option_reply(out, option, REP_ERR_INVALID, &[]);
                }
                Event::Continue
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                self.meta_context(option, data, out);
                Event::Continue
            }
            _ => {
                wire::option_reply(out, option, REP_ERR_UNSUP, &[]);
                Event::Continue
            }
        };
        Ok(status(total, event))
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.config.exports.iter().position(|e| e.name == name)
    }

    fn enter_transmission(&mut self, idx: usize) {
        if self.meta_alloc.as_deref() != Some(self.config.exports[idx].name.as_str()) {
            self.meta_alloc = None;
        }
        self.export = Some(idx);
        self.state = State::Transmission;
    }

    /// `NBD_OPT_INFO` / `NBD_OPT_GO`: name, info requests.
    fn info<'a>(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) -> Event<'a> {
        let mut r = Reader::new(data);
        let parsed = (|| {
            let name = r.string()?;
            let count = r.u16()?;
            let reqs = r.take(usize::from(count) * 2)?;
            (r.remaining() == 0 && name.len() <= MAX_STRING).then_some(())?;
            Some((core::str::from_utf8(name).ok()?, reqs))
        })();
        let Some((name, reqs)) = parsed else {
            wire::option_reply(out, option, REP_ERR_INVALID, &[]);
            return Event::Continue;
        };
        let Some(idx) = self.find(name) else {
            wire::option_reply(out, option, REP_ERR_UNKNOWN, &[]);
            return Event::Continue;
        };
        let e = &self.config.exports[idx];
        let (mut want_name, mut want_desc) = (false, false);
        for pair in reqs.chunks_exact(2) {
            match u16::from_be_bytes([pair[0], pair[1]]) {
                INFO_NAME => want_name = true,
                INFO_DESCRIPTION => want_desc = true,
                _ => {}
            }
        }
        if want_name {
            wire::info_string(out, option, INFO_NAME, &e.name);
        }
        if want_desc {
            if let Some(d) = &e.description {
                wire::info_string(out, option, INFO_DESCRIPTION, d);
            }
        }
        let b = e.block_size;
        let max = b.maximum.min(MAX_PAYLOAD);
        wire::info_block_size(out, option, b.minimum, b.preferred, max);
        wire::info_export(out, option, e.size, e.transmission_flags(self.structured));
        wire::option_reply(out, option, REP_ACK, &[]);
        if option == OPT_GO {
            self.enter_transmission(idx);
            Event::Ready { export: idx }
        } else {
            Event::Continue
        }
    }

    /// `NBD_OPT_LIST_META_CONTEXT` / `NBD_OPT_SET_META_CONTEXT`.
    fn meta_context(&mut self, option: u32, data: &[u8], out: &mut Vec<u8>) {
        if option == OPT_SET_META_CONTEXT && !self.structured {
            wire::option_reply(out, option, REP_ERR_INVALID, b"structured replies first");
            return;
        }
        let mut r = Reader::new(data);
        let parsed = (|| {
            let name = r.string()?;
            (name.len() <= MAX_STRING).then_some(())?;
            let name = core::str::from_utf8(name).ok()?;
            let count = r.u32()?;
            let mut matched = count == 0 && option == OPT_LIST_META_CONTEXT;
            for _ in 0..count {
                let q = r.string()?;
                if q.len() > MAX_STRING {
                    return None;
                }
                matched |= q == b"base:allocation" || q == b"base:";
            }
            (r.remaining() == 0).then_some((name, matched))
        })();
        let Some((name, matched)) = parsed else {
            wire::option_reply(out, option, REP_ERR_INVALID, &[]);
            return;
        };
        if self.find(name).is_none() {
            wire::option_reply(out, option, REP_ERR_UNKNOWN, &[]);
            return;
        }
        if option == OPT_SET_META_CONTEXT {
            self.meta_alloc = matched.then(|| String::from(name));
        }
        if matched {
            let id = if option == OPT_SET_META_CONTEXT {
                CONTEXT_ID_BASE_ALLOCATION
            } else {
                0
            };
            wire::rep_meta_context(out, option, id, CONTEXT_BASE_ALLOCATION);
        }
        wire::option_reply(out, option, REP_ACK, &[]);
    }

    fn request<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> Result<Status<'a>, Error> {
        let mut r = Reader::new(input);
        let (Some(magic), Some(flags), Some(command), Some(cookie), Some(offset), Some(length)) =
            (r.u32(), r.u16(), r.u16(), r.u64(), r.u64(), r.u32())
        else {
            return Ok(status(0, Event::NeedMore { at_least: 28 }));
        };
        if magic != REQUEST_MAGIC {
            self.state = State::Closed;
            return Err(Error::RequestMagic { magic });
        }
        let to = ReplyTo {
            cookie,
            command,
            flags,
            offset,
            length,
        };
        let Some(e) = self.export() else {
            self.state = State::Closed;
            return Err(Error::Closed);
        };
        let max = e.block_size.maximum.min(MAX_PAYLOAD);
        match self.validate(&to) {
            Err(errno) => {
                self.reply_error(&to, errno, out);
                if command == CMD_WRITE && length > 0 {
                    self.state = State::SkipPayload { remaining: length };
                }
                Ok(status(28, Event::Continue))
            }
            Ok(()) => {
                let fua = flags & CMD_FLAG_FUA != 0;
                let cmd = match command {
                    CMD_READ => Command::Read {
                        offset,
                        length,
                        df: flags & CMD_FLAG_DF != 0,
                    },
                    CMD_WRITE => {
                        debug_assert!(length <= max);
                        let Some(data) = r.take(length as usize) else {
                            return Ok(status(
                                0,
                                Event::NeedMore {
                                    at_least: 28 + length as usize,
                                },
                            ));
                        };
                        Command::Write { offset, data, fua }
                    }
                    CMD_DISC => {
                        self.state = State::Closed;
                        return Ok(status(28, Event::Disconnect));
                    }
                    CMD_FLUSH => Command::Flush,
                    CMD_TRIM => Command::Trim {
                        offset,
                        length,
                        fua,
                    },
                    CMD_WRITE_ZEROES => Command::WriteZeroes {
                        offset,
                        length,
                        may_trim: flags & CMD_FLAG_NO_HOLE == 0,
                        fua,
                        fast: flags & CMD_FLAG_FAST_ZERO != 0,
                    },
                    _ => Command::BlockStatus {
                        offset,
                        length,
                        req_one: flags & CMD_FLAG_REQ_ONE != 0,
                    },
                };
                let consumed = if command == CMD_WRITE {
                    28 + length as usize
                } else {
                    28
                };
                Ok(status(
                    consumed,
                    Event::Request(Request {
                        reply: to,
                        command: cmd,
                    }),
                ))
            }
        }
    }

    /// Checks a request header; `Err(errno)` to refuse it.
    fn validate(&self, to: &ReplyTo) -> Result<(), u32> {
        let Some(e) = self.export() else {
            return Err(EINVAL);
        };
        let fz = if e.fast_zero && e.writable {
            CMD_FLAG_FAST_ZERO
        } else {
            0
        };
        let df = if self.structured { CMD_FLAG_DF } else { 0 };
        // FUA is accepted on every command (the spec says servers must).
        let allowed = CMD_FLAG_FUA
            | match to.command {
                CMD_READ => df,
                CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | fz,
                CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
                _ => 0,
            };
        let writes = matches!(to.command, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES);
        match to.command {
            CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS => {}
            CMD_DISC => return Ok(()),
            CMD_FLUSH => {
                return if to.offset == 0 && to.length == 0 && to.flags & !allowed == 0 {
                    Ok(())
                } else {
                    Err(EINVAL)
                }
            }
            _ => return Err(EINVAL),
        }
        if to.flags & !allowed != 0 {
            return Err(EINVAL);
        }
        if to.command == CMD_BLOCK_STATUS && !self.base_allocation() {
            return Err(EINVAL);
        }
        if writes && !e.writable {
            return Err(EPERM);
        }
        let max = e.block_size.maximum.min(MAX_PAYLOAD);
        if matches!(to.command, CMD_READ | CMD_WRITE) && to.length > max {
            return Err(EOVERFLOW);
        }
        if to.length == 0 {
            return Err(EINVAL);
        }
        let min = u64::from(e.block_size.minimum);
        if !to.offset.is_multiple_of(min) || !u64::from(to.length).is_multiple_of(min) {
            return Err(EINVAL);
        }
        match to.offset.checked_add(u64::from(to.length)) {
            Some(end) if end <= e.size => Ok(()),
            Some(_) if writes => Err(ENOSPC),
            _ => Err(EINVAL),
        }
    }

    /// Answers a successful `WRITE`, `FLUSH`, `TRIM` or `WRITE_ZEROES`
    /// (a simple reply with error 0).
    pub fn reply_ok(&self, to: &ReplyTo, out: &mut Vec<u8>) {
        wire::simple_reply(out, 0, to.cookie);
    }

    /// Answers any request with `errno` (one of the `consts::E*` values;
    /// 0 is sent as `EIO`): an `NBD_REPLY_TYPE_ERROR` chunk when
    /// structured replies are on, else a simple reply.
    pub fn reply_error(&self, to: &ReplyTo, errno: u32, out: &mut Vec<u8>) {
        let errno = if errno == 0 { EIO } else { errno };
        if self.structured {
            wire::chunk_error(out, to.cookie, true, errno, "", None);
        } else {
            wire::simple_reply(out, errno, to.cookie);
        }
    }

    /// Answers a `READ` with all its data (`data.len()` must equal the
    /// request length, else the reply is `EIO`): a simple reply, or one
    /// `NBD_REPLY_TYPE_OFFSET_DATA` chunk with `NBD_REPLY_FLAG_DONE`.
    pub fn reply_read(&self, to: &ReplyTo, data: &[u8], out: &mut Vec<u8>) {
        if data.len() != to.length as usize || data.is_empty() {
            return self.reply_error(to, EIO, out);
        }
        if self.structured {
            wire::chunk_offset_data(out, to.cookie, true, to.offset, data);
        } else {
            wire::simple_reply(out, 0, to.cookie);
            out.extend_from_slice(data);
        }
    }

    /// Answers a `READ` with zeroes for the whole range: an
    /// `NBD_REPLY_TYPE_OFFSET_HOLE` chunk (unless `NBD_CMD_FLAG_DF` asked
    /// for data), or explicit zeroes.
    pub fn reply_read_zeroes(&self, to: &ReplyTo, out: &mut Vec<u8>) {
        if self.structured && to.flags & CMD_FLAG_DF == 0 && to.length > 0 {
            wire::chunk_offset_hole(out, to.cookie, true, to.offset, to.length);
        } else if self.structured {
            wire::chunk_header(
                out,
                REPLY_FLAG_DONE,
                REPLY_TYPE_OFFSET_DATA,
                to.cookie,
                to.length.saturating_add(8),
            );
            out.extend_from_slice(&to.offset.to_be_bytes());
            out.resize(out.len() + to.length as usize, 0);
        } else {
            wire::simple_reply(out, 0, to.cookie);
            out.resize(out.len() + to.length as usize, 0);
        }
    }

    /// Answers a `BLOCK_STATUS` with `(length, flags)` extents (flags of
    /// `base:allocation`: [`STATE_HOLE`], [`STATE_ZERO`]) starting at the
    /// request offset. Zero-length extents are skipped, the list is clipped
    /// to the request length (one extent with `REQ_ONE`, at most 16384
    /// otherwise) and adjacent equal extents merged; an empty list is sent
    /// as one extent of status 0 (always a correct answer).
    pub fn reply_block_status(&self, to: &ReplyTo, extents: &[(u64, u32)], out: &mut Vec<u8>) {
        const MAX_DESCRIPTORS: usize = 16384;
        let limit = if to.flags & CMD_FLAG_REQ_ONE != 0 {
            1
        } else {
            MAX_DESCRIPTORS
        };
        let mut left = u64::from(to.length);
        let mut descs: Vec<(u32, u32)> = Vec::new();
        for &(len, flags) in extents {
            if left == 0 {
                break;
            }
            let len = len.min(left);
            if len == 0 {
                continue;
            }
            left -= len;
            let flags = flags & (STATE_HOLE | STATE_ZERO);
            let full = descs.len() == limit;
            match descs.last_mut() {
                Some(last) if last.1 == flags => last.0 += len as u32,
                _ if full => break,
                _ => descs.push((len as u32, flags)),
            }
        }
        if descs.is_empty() {
            descs.push((to.length, 0));
        }
        wire::chunk_block_status(out, to.cookie, true, CONTEXT_ID_BASE_ALLOCATION, &descs);
    }
}

fn status(consumed: usize, event: Event<'_>) -> Status<'_> {
    Status { consumed, event }
}

fn skip(input: &[u8], remaining: u32) -> usize {
    input.len().min(remaining as usize)
}

fn progress_or_need(n: usize, left: u32) -> Status<'static> {
    if n == 0 {
        status(
            0,
            Event::NeedMore {
                at_least: (left as usize).min(1 << 16),
            },
        )
    } else {
        status(n, Event::Continue)
    }
}
