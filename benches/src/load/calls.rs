//! Setting calls up and tearing them down: over the ng protocol on an external relay, or
//! directly on an in-process [`Bridge`]. Either way the result is a set of [`Endpoints`]: per
//! call a caller and a callee socket on the local address, each connected to the relay port
//! that faces it, so stream `2k` (caller to callee) and `2k + 1` (callee to caller) cross the
//! relay.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use rtpedge::ng::{NgClient, Value};
use rtpedge_bridge::{Bridge, LegId, LegRequest, RemoteSpec, SpliceMode};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};

use super::{sdp, traffic::Endpoints};
use crate::{Error, mmsg::set_recv_buffer};

/// Receive buffer asked for on each generator socket: deep enough that the generator's own
/// scheduling hiccups never drop packets (that would be blamed on the relay).
const RCVBUF: usize = 2 << 20;

/// How long setting up or tearing down took.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Timing {
    /// Calls handled.
    pub calls: usize,
    /// Failures (teardown only; setup stops at the first).
    pub errors: usize,
    /// Seconds taken.
    pub seconds: f64,
}

/// A bound, non-blocking UDP socket on `ip`, ephemeral port, with a deep receive buffer.
pub fn endpoint_socket(ip: IpAddr) -> Result<UdpSocket, Error> {
    let addr = SocketAddr::new(ip, 0);
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(Error::io("creating a UDP socket"))?;
    s.bind(&addr.into())
        .map_err(Error::io(format!("binding {addr}")))?;
    s.set_nonblocking(true)
        .map_err(Error::io("making a socket non-blocking"))?;
    let _ = s.set_send_buffer_size(RCVBUF);
    set_recv_buffer(&s, RCVBUF)?;
    Ok(s.into())
}

fn connect(s: &UdpSocket, to: SocketAddr) -> Result<(), Error> {
    s.connect(to)
        .map_err(Error::io(format!("connecting to the relay port {to}")))
}

/// Calls on an ng relay.
pub struct NgCalls {
    client: NgClient,
    /// `(call-id, from-tag)` of each call.
    calls: Vec<(String, String)>,
}

/// The `received-from` key Kamailio adds: the SIP source, here the endpoints' address.
fn received_from(ip: IpAddr) -> Value {
    let fam = if ip.is_ipv4() { "IP4" } else { "IP6" };
    Value::list([Value::from(fam), Value::from(ip.to_string().as_str())])
}

impl NgCalls {
    /// Sets up `calls` calls on the relay at `ng` (offer with the caller's SDP, answer with the
    /// callee's), with endpoint sockets on `local`. Call-ids start with `prefix`.
    pub fn setup(
        ng: SocketAddr,
        calls: usize,
        local: IpAddr,
        prefix: &str,
    ) -> Result<(NgCalls, Endpoints, Timing), Error> {
        let client = NgClient::new(ng)
            .map_err(Error::io(format!("ng client for {ng}")))?
            .with_timeout(Duration::from_millis(1000));
        client.ping().map_err(|source| Error::Ng {
            what: format!("ping {ng} (is the relay running?)"),
            source,
        })?;
        let start = Instant::now();
        let mut me = NgCalls {
            client,
            calls: Vec::with_capacity(calls),
        };
        let mut eps = Endpoints {
            sockets: Vec::with_capacity(2 * calls),
            peer: Vec::with_capacity(2 * calls),
            relay: Vec::with_capacity(2 * calls),
        };
        for k in 0..calls {
            if let Err(e) = me.add_call(&mut eps, k, calls, local, prefix) {
                // Nothing may stay behind on the relay.
                me.teardown();
                return Err(e);
            }
        }
        let timing = Timing {
            calls,
            errors: 0,
            seconds: start.elapsed().as_secs_f64(),
        };
        Ok((me, eps, timing))
    }

    fn add_call(
        &mut self,
        eps: &mut Endpoints,
        k: usize,
        calls: usize,
        local: IpAddr,
        prefix: &str,
    ) -> Result<(), Error> {
        let extra = [("received-from", received_from(local))];
        let call_id = format!("{prefix}-{k}");
        let (from_tag, to_tag) = (format!("{prefix}-a{k}"), format!("{prefix}-b{k}"));
        let caller = endpoint_socket(local)?;
        let callee = endpoint_socket(local)?;
        let caller_addr = caller.local_addr().map_err(Error::io("local address"))?;
        let callee_addr = callee.local_addr().map_err(Error::io("local address"))?;
        let offer = self
            .client
            .offer(
                &call_id,
                &from_tag,
                &sdp::audio_sdp(caller_addr, 2 * k as u64 + 1),
                &extra,
            )
            .map_err(|source| Error::Ng {
                what: format!("offer of call {call_id} (call {} of {calls})", k + 1),
                source,
            })?;
        // Registered right away so that a failure below still deletes it.
        self.calls.push((call_id.clone(), from_tag.clone()));
        let to_callee = relay_target(&offer, "offer", &call_id)?;
        let answer = self
            .client
            .answer(
                &call_id,
                &from_tag,
                &to_tag,
                &sdp::audio_sdp(callee_addr, 2 * k as u64 + 2),
                &extra,
            )
            .map_err(|source| Error::Ng {
                what: format!("answer of call {call_id}"),
                source,
            })?;
        let to_caller = relay_target(&answer, "answer", &call_id)?;
        // The caller sends to the port the answer advertised, the callee to the offer's.
        connect(&caller, to_caller)?;
        connect(&callee, to_callee)?;
        let base = eps.sockets.len();
        eps.sockets.extend([caller, callee]);
        eps.peer.extend([base + 1, base]);
        eps.relay.extend([to_caller, to_callee]);
        Ok(())
    }

    /// Deletes every call (errors are counted, not fatal).
    pub fn teardown(self) -> Timing {
        let start = Instant::now();
        let mut errors = 0;
        for (call_id, from_tag) in &self.calls {
            if self
                .client
                .delete(call_id, Some(from_tag), None, &[])
                .is_err()
            {
                errors += 1;
            }
        }
        Timing {
            calls: self.calls.len(),
            errors,
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}

fn relay_target(reply: &Value, what: &str, call_id: &str) -> Result<SocketAddr, Error> {
    let sdp = reply
        .get_bytes("sdp")
        .ok_or_else(|| Error::Relay(format!("the {what} reply for {call_id} has no SDP")))?;
    sdp::audio_target(sdp).ok_or_else(|| {
        Error::Relay(format!(
            "no audio address in the SDP of the {what} reply for {call_id}: {}",
            String::from_utf8_lossy(sdp)
        ))
    })
}

/// Calls spliced directly on an in-process bridge.
pub struct BridgeCalls<'b> {
    bridge: Option<&'b Bridge>,
    legs: Vec<LegId>,
}

impl BridgeCalls<'_> {
    /// No calls (a placeholder while a set is replaced).
    pub fn empty() -> BridgeCalls<'static> {
        BridgeCalls {
            bridge: None,
            legs: Vec::new(),
        }
    }
}

impl<'b> BridgeCalls<'b> {
    /// Provisions two legs per call, sets each leg's remote to its endpoint exactly and
    /// splices them: the daemon's work for an offer and an answer, without the daemon.
    pub fn setup(
        bridge: &'b Bridge,
        calls: usize,
        local: IpAddr,
    ) -> Result<(BridgeCalls<'b>, Endpoints, Timing), Error> {
        let start = Instant::now();
        let mut me = BridgeCalls {
            bridge: Some(bridge),
            legs: Vec::with_capacity(2 * calls),
        };
        let mut eps = Endpoints {
            sockets: Vec::with_capacity(2 * calls),
            peer: Vec::with_capacity(2 * calls),
            relay: Vec::with_capacity(2 * calls),
        };
        for k in 0..calls {
            if let Err(e) = me.add_call(&mut eps, k, local) {
                me.teardown();
                return Err(e);
            }
        }
        let timing = Timing {
            calls,
            errors: 0,
            seconds: start.elapsed().as_secs_f64(),
        };
        Ok((me, eps, timing))
    }

    fn add_call(&mut self, eps: &mut Endpoints, k: usize, local: IpAddr) -> Result<(), Error> {
        let Some(bridge) = self.bridge else {
            return Err(Error::Invalid("no bridge".into()));
        };
        let bridge_err = |what: &str| {
            let what = format!("{what} of call {k}");
            move |source| Error::Bridge { what, source }
        };
        let caller = endpoint_socket(local)?;
        let callee = endpoint_socket(local)?;
        let caller_addr = caller.local_addr().map_err(Error::io("local address"))?;
        let callee_addr = callee.local_addr().map_err(Error::io("local address"))?;
        let a = bridge
            .provision(LegRequest {
                address: Some(local),
                ..LegRequest::default()
            })
            .map_err(bridge_err("provisioning leg A"))?;
        self.legs.push(a.id);
        let b = bridge
            .provision(LegRequest {
                address: Some(local),
                near: Some(a.id),
                ..LegRequest::default()
            })
            .map_err(bridge_err("provisioning leg B"))?;
        self.legs.push(b.id);
        bridge
            .set_remote(a.id, RemoteSpec::exact(caller_addr))
            .map_err(bridge_err("setting the caller's remote"))?;
        bridge
            .set_remote(b.id, RemoteSpec::exact(callee_addr))
            .map_err(bridge_err("setting the callee's remote"))?;
        bridge
            .splice(&[a.id, b.id], SpliceMode::Full)
            .map_err(bridge_err("splicing"))?;
        connect(&caller, a.rtp)?;
        connect(&callee, b.rtp)?;
        let base = eps.sockets.len();
        eps.sockets.extend([caller, callee]);
        eps.peer.extend([base + 1, base]);
        eps.relay.extend([a.rtp, b.rtp]);
        Ok(())
    }

    /// Releases every leg.
    pub fn teardown(self) -> Timing {
        let start = Instant::now();
        let errors = self
            .legs
            .iter()
            .filter(|l| self.bridge.is_some_and(|b| b.release(**l).is_err()))
            .count();
        Timing {
            calls: self.legs.len() / 2,
            errors,
            seconds: start.elapsed().as_secs_f64(),
        }
    }
}
