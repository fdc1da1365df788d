//! HTTP/1.1 responses as the client reads them: the head parsed by
//! `httparse`, every length checked, every line capped, chunked bodies
//! with checked arithmetic, all cookies kept, `Connection: close` seen.
//! No byte sequence makes it panic (a fuzz target feeds it).

use std::io::{BufRead, Read};

use crate::xml::MAX_MESSAGE;
use crate::Error;

/// Longest header block accepted.
pub const MAX_HEAD: usize = 64 << 10;
/// Longest single line (status, header, chunk size) accepted.
pub const MAX_LINE: usize = 8 << 10;
/// Most headers in one response.
pub const MAX_HEADERS: usize = 64;

/// One response.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Every `Set-Cookie` as (name, value), value unquoted.
    pub cookies: Vec<(String, String)>,
    /// The server closes the connection after this response.
    pub close: bool,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

fn io(source: std::io::Error) -> Error {
    Error::Io {
        context: "reading the response".into(),
        source,
    }
}

fn bad(what: &str) -> Error {
    Error::Malformed(format!("HTTP: {what}"))
}

/// Reads one line (with its `\n`) of at most `MAX_LINE` bytes; empty at EOF.
fn read_line(r: &mut impl BufRead, out: &mut Vec<u8>) -> Result<usize, Error> {
    out.clear();
    let n = Read::take(&mut *r, MAX_LINE as u64 + 1)
        .read_until(b'\n', out)
        .map_err(io)?;
    if n > MAX_LINE {
        return Err(bad("line too long"));
    }
    Ok(n)
}

/// Reads one response from `r`.
pub fn read_response(r: &mut impl BufRead) -> Result<Response, Error> {
    let mut head = Vec::new();
    let mut line = Vec::new();
    loop {
        let n = read_line(r, &mut line)?;
        if n == 0 {
            return Err(if head.is_empty() {
                io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ))
            } else {
                bad("headers truncated")
            });
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(bad("headers too long"));
        }
        if line == b"\r\n" || line == b"\n" {
            break;
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete head")),
        Err(e) => return Err(bad(&e.to_string())),
    }
    let status = parsed.code.ok_or_else(|| bad("no status"))?;
    let mut out = Response {
        status,
        ..Response::default()
    };
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| bad("header not UTF-8"))?
            .trim();
        match h.name.to_ascii_lowercase().as_str() {
            "content-length" => {
                let n: u64 = value.parse().map_err(|_| bad("bad Content-Length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad("two different Content-Length"));
                }
                length = Some(n);
            }
            "transfer-encoding" => {
                chunked = value
                    .rsplit(',')
                    .next()
                    .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
            }
            "connection" => {
                out.close |= value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close"))
            }
            "set-cookie" => {
                let pair = value.split(';').next().unwrap_or_default();
                if let Some((name, v)) = pair.split_once('=') {
                    let (name, v) = (name.trim(), v.trim().trim_matches('"'));
                    if !name.is_empty() {
                        out.cookies.retain(|(n, _)| n != name);
                        out.cookies.push((name.to_string(), v.to_string()));
                    }
                }
            }
            _ => {}
        }
    }
    if matches!(status, 100..=199 | 204 | 304) {
        return Ok(out);
    }
    if chunked {
        read_chunked(r, &mut out.body, &mut line)?;
    } else if let Some(len) = length {
        if len > MAX_MESSAGE as u64 {
            return Err(bad("response too large"));
        }
        out.body.resize(len as usize, 0);
        r.read_exact(&mut out.body).map_err(io)?;
    } else if out.close {
        // The body runs to the end of the connection.
        Read::take(&mut *r, MAX_MESSAGE as u64 + 1)
            .read_to_end(&mut out.body)
            .map_err(io)?;
        if out.body.len() > MAX_MESSAGE {
            return Err(bad("response too large"));
        }
    } else {
        return Err(bad("response without a length on a kept-alive connection"));
    }
    Ok(out)
}

/// Reads a chunked body (after the head) into `body`, within
/// [`MAX_MESSAGE`] bytes; servers use it for chunked requests.
pub fn read_chunked_body(r: &mut impl BufRead, body: &mut Vec<u8>) -> Result<(), Error> {
    read_chunked(r, body, &mut Vec::new())
}

fn read_chunked(r: &mut impl BufRead, body: &mut Vec<u8>, line: &mut Vec<u8>) -> Result<(), Error> {
    loop {
        if read_line(r, line)? == 0 {
            return Err(bad("chunked body truncated"));
        }
        let text = std::str::from_utf8(line).map_err(|_| bad("chunk size not ASCII"))?;
        let digits = text.split(';').next().unwrap_or_default().trim();
        if digits.is_empty() || digits.len() > 16 {
            return Err(bad("bad chunk size"));
        }
        let size = u64::from_str_radix(digits, 16).map_err(|_| bad("bad chunk size"))?;
        let end = (body.len() as u64)
            .checked_add(size)
            .filter(|&e| e <= MAX_MESSAGE as u64)
            .ok_or_else(|| bad("response too large"))?;
        if size == 0 {
            // Trailers, up to the blank line.
            let mut total = 0;
            loop {
                let n = read_line(r, line)?;
                total += n;
                if n == 0 || total > MAX_HEAD {
                    return Err(bad("trailers truncated or too long"));
                }
                if line.as_slice() == b"\r\n" || line.as_slice() == b"\n" {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(end as usize, 0);
        r.read_exact(&mut body[start..]).map_err(io)?;
        read_line(r, line)?;
        if line.as_slice() != b"\r\n" && line.as_slice() != b"\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<Response, Error> {
        read_response(&mut std::io::BufReader::new(raw))
    }

    #[test]
    fn lengths_chunks_cookies_and_close() {
        let r = parse(b"HTTP/1.1 200 OK\r\nSet-Cookie: vmware_soap_session=\"abc\"; Path=/; HttpOnly\r\nSet-Cookie: vmware_client=VMware; Path=/\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert_eq!(
            r.cookies,
            [
                ("vmware_soap_session".to_string(), "abc".to_string()),
                ("vmware_client".to_string(), "VMware".to_string())
            ]
        );
        assert!(!r.close);
        let r = parse(b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nTrailer: t\r\n\r\n").unwrap();
        assert_eq!(
            (r.status, r.body.as_slice(), r.close),
            (500, &b"hello world"[..], true)
        );
        let r = parse(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nto the end").unwrap();
        assert_eq!(r.body, b"to the end");
        let r = parse(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert!(r.body.is_empty());
    }

    #[test]
    fn malformed_is_an_error_never_a_panic() {
        for raw in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\n",
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            b"HTTP/1.1 200 OK\r\n\r\nno length, kept alive",
        ] {
            assert!(parse(raw).is_err(), "{}", String::from_utf8_lossy(raw));
        }
        let long = format!("HTTP/1.1 200 OK\r\nX: {}\r\n\r\n", "a".repeat(MAX_LINE + 1));
        assert!(parse(long.as_bytes()).is_err());
        let many = format!(
            "HTTP/1.1 200 OK\r\n{}\r\n",
            "A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(parse(many.as_bytes()).is_err());
    }
}
