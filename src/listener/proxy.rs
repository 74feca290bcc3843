//! The PROXY protocol (HAProxy's spec, versions 1 and 2): the header a load balancer
//! writes before anything else on a connection, carrying the client's real address.
//!
//! Owns the parsing of that header and the bounded read of it from a freshly accepted
//! socket. Called by the listener (`serve_layered`) for listeners with
//! `proxy_protocol = true`, before TLS, WebSocket or MQTT, and under the listener's
//! handshake timeout. It never reads past the header: what follows belongs to the next
//! layer, so v2 is read by its length field and v1 byte by byte up to its CRLF. It never
//! trusts a header on a listener that does not ask for one.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature (spec §2.2).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, CRLF included (spec §2.1).
pub const V1_MAX: usize = 107;
/// The longest v2 address block accepted (addresses plus TLVs). The spec allows 65535;
/// balancers send well under this (AWS NLB's TLVs included), and a bound keeps an
/// unauthenticated peer from making the broker buffer 64 KiB.
pub const V2_MAX_BLOCK: usize = 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("no PROXY protocol header (the connection starts with {0:02x?})")]
    Absent(Vec<u8>),
    #[error("PROXY v1 header longer than {V1_MAX} bytes")]
    V1TooLong,
    #[error("PROXY v1 header malformed: {0}")]
    V1Malformed(&'static str),
    #[error("PROXY v2 header: {0}")]
    V2Malformed(&'static str),
    #[error("PROXY v2 address block of {0} bytes exceeds {V2_MAX_BLOCK}")]
    V2TooLong(usize),
    #[error("connection closed inside the PROXY header")]
    Truncated,
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// Reads one PROXY header from `stream`. `Ok(Some(addr))`: the client's address;
/// `Ok(None)`: a valid header that carries none (v1 `UNKNOWN`, v2 `LOCAL` such as a
/// balancer's health check, or a non-IP family), so the socket's own peer stands.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyError> {
    // Both versions are told apart by their first bytes: v1 starts "PROXY ", v2 with
    // the 12-byte signature. The shortest v1 line ("PROXY UNKNOWN\r\n") is 15 bytes, so
    // reading 12 never reads past a header.
    let mut head = [0u8; 12];
    read_exact(stream, &mut head).await?;
    if head == V2_SIGNATURE {
        let mut fixed = [0u8; 4];
        read_exact(stream, &mut fixed).await?;
        let len = usize::from(u16::from_be_bytes([fixed[2], fixed[3]]));
        if len > V2_MAX_BLOCK {
            return Err(ProxyError::V2TooLong(len));
        }
        let mut block = vec![0u8; len];
        read_exact(stream, &mut block).await?;
        return parse_v2(fixed[0], fixed[1], &block);
    }
    if !head.starts_with(b"PROXY ") {
        return Err(ProxyError::Absent(head.to_vec()));
    }
    let mut line = head.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyError::V1TooLong);
        }
        let mut byte = [0u8; 1];
        read_exact(stream, &mut byte).await?;
        line.push(byte[0]);
    }
    parse_v1(&line)
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProxyError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyError::Truncated),
        Err(e) => Err(ProxyError::Io(e.to_string())),
    }
}

/// Parses a whole v1 line, CRLF included: `PROXY TCP4|TCP6 src dst sport dport\r\n` or
/// `PROXY UNKNOWN ...\r\n` (spec §2.1).
pub fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    if line.len() > V1_MAX {
        return Err(ProxyError::V1TooLong);
    }
    let text = std::str::from_utf8(line)
        .ok()
        .and_then(|t| t.strip_suffix("\r\n"))
        .ok_or(ProxyError::V1Malformed("not ASCII ending in CRLF"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(ProxyError::V1Malformed("does not start with PROXY"));
    }
    let family = fields.next().ok_or(ProxyError::V1Malformed("no family"))?;
    if family == "UNKNOWN" {
        // The receiver must ignore the rest of an UNKNOWN line (spec §2.1).
        return Ok(None);
    }
    let mut next = |what| fields.next().ok_or(ProxyError::V1Malformed(what));
    let (src, _dst, sport, _dport) = (
        next("no source address")?,
        next("no destination address")?,
        next("no source port")?,
        next("no destination port")?,
    );
    if fields.next().is_some() {
        return Err(ProxyError::V1Malformed("trailing fields"));
    }
    let ip: IpAddr = match family {
        "TCP4" => src
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .map_err(|_| ProxyError::V1Malformed("bad IPv4 source address"))?,
        "TCP6" => src
            .parse::<Ipv6Addr>()
            .map(IpAddr::V6)
            .map_err(|_| ProxyError::V1Malformed("bad IPv6 source address"))?,
        _ => {
            return Err(ProxyError::V1Malformed(
                "family is not TCP4, TCP6 or UNKNOWN",
            ))
        }
    };
    // Ports are decimal without leading zeros (spec §2.1); `u16` parsing bounds them.
    if sport.len() > 1 && sport.starts_with('0') {
        return Err(ProxyError::V1Malformed("bad source port"));
    }
    let port: u16 = sport
        .parse()
        .map_err(|_| ProxyError::V1Malformed("bad source port"))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// Parses a v2 header after its signature: the version/command byte, the family byte
/// and the address block (spec §2.2).
pub fn parse_v2(ver_cmd: u8, family: u8, block: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::V2Malformed("version is not 2"));
    }
    match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection (a health check); no client address.
        0x0 => return Ok(None),
        0x1 => {}
        _ => {
            return Err(ProxyError::V2Malformed(
                "command is neither LOCAL nor PROXY",
            ))
        }
    }
    match family >> 4 {
        // AF_INET: 4 + 4 address bytes, then 2 + 2 port bytes.
        0x1 => {
            let a = block
                .get(..12)
                .ok_or(ProxyError::V2Malformed("IPv4 address block too short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Ok(Some(SocketAddr::new(
                IpAddr::V4(ip),
                u16::from_be_bytes([a[8], a[9]]),
            )))
        }
        // AF_INET6: 16 + 16 address bytes, then 2 + 2 port bytes.
        0x2 => {
            let a = block
                .get(..36)
                .ok_or(ProxyError::V2Malformed("IPv6 address block too short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([a[32], a[33]]),
            )))
        }
        // AF_UNSPEC or AF_UNIX: nothing usable as an IP address.
        0x0 | 0x3 => Ok(None),
        _ => Err(ProxyError::V2Malformed("unknown address family")),
    }
}

/// Encodes a v2 PROXY header for a TCP connection from `src` to `dst` (the tests' and
/// the load generator's side of the protocol).
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let result = read_header(&mut cursor).await;
        let mut rest = Vec::new();
        let _ = cursor.read_to_end(&mut rest).await;
        (result, rest)
    }

    #[tokio::test]
    async fn v1_headers_give_the_source_and_leave_what_follows() {
        let (r, rest) = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 51000 1883\r\n\x10\x0c").await;
        assert_eq!(r, Ok(Some(addr("192.0.2.7:51000"))));
        assert_eq!(rest, b"\x10\x0c");
        let (r, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1883\r\n").await;
        assert_eq!(r, Ok(Some(addr("[2001:db8::1]:4000"))));
        let (r, rest) = read(b"PROXY UNKNOWN\r\nX").await;
        assert_eq!(r, Ok(None));
        assert_eq!(rest, b"X");
    }

    #[tokio::test]
    async fn v2_headers_give_the_source_and_leave_what_follows() {
        let mut h = encode_v2(addr("203.0.113.9:40000"), addr("10.0.0.1:1883"));
        h.extend_from_slice(b"MQTT");
        let (r, rest) = read(&h).await;
        assert_eq!(r, Ok(Some(addr("203.0.113.9:40000"))));
        assert_eq!(rest, b"MQTT");
        let h6 = encode_v2(addr("[2001:db8::5]:7"), addr("[2001:db8::1]:1883"));
        assert_eq!(read(&h6).await.0, Ok(Some(addr("[2001:db8::5]:7"))));
        // LOCAL (a health check): valid, no address.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read(&local).await.0, Ok(None));
        // TLVs after the addresses are skipped.
        let mut tlv = V2_SIGNATURE.to_vec();
        tlv.extend_from_slice(&[0x21, 0x11, 0, 17]);
        tlv.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 80, 0, 81]);
        tlv.extend_from_slice(&[0x04, 0, 2, 0xaa, 0xbb]);
        tlv.push(0x30);
        let (r, rest) = read(&tlv).await;
        assert_eq!(r, Ok(Some(addr("1.2.3.4:80"))));
        assert_eq!(rest, [0x30]);
    }

    #[tokio::test]
    async fn bad_headers_are_refused() {
        // Absent: MQTT straight away.
        let connect = b"\x10\x10\x00\x04MQTT\x04\x02\x00\x3c\x00\x04abcd";
        assert!(matches!(read(connect).await.0, Err(ProxyError::Absent(_))));
        // Truncated, both versions.
        assert_eq!(
            read(b"PROXY TCP4 1.2.3.4").await.0,
            Err(ProxyError::Truncated)
        );
        let v2 = encode_v2(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        assert_eq!(read(&v2[..20]).await.0, Err(ProxyError::Truncated));
        assert_eq!(read(&v2[..5]).await.0, Err(ProxyError::Truncated));
        // Garbage and over-long lines.
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert_eq!(read(long.as_bytes()).await.0, Err(ProxyError::V1TooLong));
        for bad in [
            &b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
        ] {
            assert!(
                matches!(read(bad).await.0, Err(ProxyError::V1Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(read(&big).await.0, Err(ProxyError::V2TooLong(65535)));
        let mut short = V2_SIGNATURE.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert!(matches!(
            read(&short).await.0,
            Err(ProxyError::V2Malformed(_))
        ));
        let mut v3 = V2_SIGNATURE.to_vec();
        v3.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert!(matches!(read(&v3).await.0, Err(ProxyError::V2Malformed(_))));
    }
}
