//! The SDP the generator offers and answers with (a typical G.711 audio offer, as a SIP phone
//! sends it), and reading the relay's address back out of the rewritten SDP.

use std::net::{IpAddr, SocketAddr};

/// An audio SDP for an endpoint at `addr`: PCMU, PCMA and telephone-event, 20 ms.
pub fn audio_sdp(addr: SocketAddr, session_id: u64) -> Vec<u8> {
    let (fam, ip) = match addr.ip() {
        IpAddr::V4(a) => ("IP4", a.to_string()),
        IpAddr::V6(a) => ("IP6", a.to_string()),
    };
    format!(
        "v=0\r\n\
         o=- {session_id} {session_id} IN {fam} {ip}\r\n\
         s=rtpedge-load\r\n\
         c=IN {fam} {ip}\r\n\
         t=0 0\r\n\
         m=audio {port} RTP/AVP 0 8 101\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-16\r\n\
         a=ptime:20\r\n\
         a=sendrecv\r\n",
        port = addr.port()
    )
    .into_bytes()
}

fn connection(line: &str) -> Option<IpAddr> {
    let mut f = line.strip_prefix("c=")?.split_whitespace();
    let (_net, _fam, addr) = (f.next()?, f.next()?, f.next()?);
    // Multicast TTL / count suffixes ("/127") are not expected from a relay; strip them anyway.
    addr.split('/').next()?.parse().ok()
}

/// Where the first audio stream of `sdp` wants media: the media-level `c=` of the first
/// `m=audio` section, else the session-level one, with that section's port.
pub fn audio_target(sdp: &[u8]) -> Option<SocketAddr> {
    let text = std::str::from_utf8(sdp).ok()?;
    let mut session_c = None;
    let mut port: Option<u16> = None;
    let mut media_c = None;
    for line in text.lines().map(str::trim_end) {
        if line.starts_with("m=") {
            if port.is_some() {
                break; // past the first audio section
            }
            if let Some(rest) = line.strip_prefix("m=audio ") {
                port = rest.split([' ', '/']).next()?.parse().ok();
            }
            continue;
        }
        if let Some(ip) = connection(line) {
            if port.is_some() {
                media_c = Some(ip);
            } else if session_c.is_none() {
                session_c = Some(ip);
            }
        }
    }
    let port = port.filter(|p| *p != 0)?;
    Some(SocketAddr::new(media_c.or(session_c)?, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_sdp_round_trips() {
        let a: SocketAddr = "127.0.0.1:40002".parse().unwrap();
        assert_eq!(audio_target(&audio_sdp(a, 7)), Some(a));
        let a: SocketAddr = "[::1]:40004".parse().unwrap();
        let sdp = audio_sdp(a, 7);
        assert!(String::from_utf8_lossy(&sdp).contains("c=IN IP6 ::1\r\n"));
        assert_eq!(audio_target(&sdp), Some(a));
    }

    #[test]
    fn media_level_connection_wins_and_only_the_first_audio_counts() {
        let sdp = b"v=0\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 30000 RTP/AVP 0\r\n\
                    c=IN IP4 10.0.0.2\r\na=rtcp:30001\r\nm=audio 30010 RTP/AVP 0\r\n\
                    c=IN IP4 10.0.0.3\r\n";
        assert_eq!(audio_target(sdp), Some("10.0.0.2:30000".parse().unwrap()));
        let sdp = b"v=0\nc=IN IP4 10.0.0.1\nm=video 5000 RTP/AVP 96\nm=audio 30000 RTP/AVP 0\n";
        assert_eq!(audio_target(sdp), Some("10.0.0.1:30000".parse().unwrap()));
    }

    #[test]
    fn rejects_what_has_no_target() {
        assert_eq!(audio_target(b"v=0\r\nc=IN IP4 1.2.3.4\r\n"), None);
        assert_eq!(audio_target(b"m=audio 3000 RTP/AVP 0\r\n"), None);
        assert_eq!(
            audio_target(b"c=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n"),
            None,
            "port 0: disabled"
        );
        assert_eq!(audio_target(&[0xff, 0xfe]), None);
    }
}
