//! Session lifecycle: attach (create, resume, take over, replace), end, expiry, and
//! wills. Each step that changes what a restart must see produces the store records for
//! it, which the caller writes in order.
//!
//! Owned by the broker, called by connections (their CONNECT and their end), by the
//! broker's own restore (expiry of recovered sessions) and by the cluster (takeover from
//! another node): none of them calls into `connection`.

use super::Broker;
use crate::dead_letter::DeadLetterReason;
use crate::message::{now_ms, Message};
use crate::protocol::{reason, LastWill, QoS};
use crate::session::{Delivery, LinkLimits, Session, EXPIRY_NEVER};
use crate::store::Record;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

/// Finds, creates or replaces the session for `client_id` and makes `conn_id` its owner.
/// A connection already attached is kicked (takeover, [MQTT-3.1.4-3]). Returns the
/// session, whether it was resumed (session present), the records that make the change
/// durable (to commit before CONNACK), and the sessions it ended.
pub(crate) fn attach_session(
    broker: &Arc<Broker>,
    client_id: &Arc<str>,
    clean_start: bool,
    expiry_secs: u32,
    conn_id: u64,
    kick: oneshot::Sender<u8>,
    link: LinkLimits,
) -> (Arc<Session>, bool, Vec<Record>, Vec<Discarded>) {
    let mut records = Vec::new();
    let mut discarded = Vec::new();
    if let Some(existing) = broker.sessions.get(client_id) {
        // A session with expiry 0 (3.1.1 clean session 1) ends with its connection, and a
        // takeover closes that connection: its state is never handed to the next one,
        // whatever that one asks for [MQTT-3.1.2-6].
        if !clean_start && !existing.is_ended() && existing.expiry_secs() > 0 {
            if let Some(previous) = existing.attach(conn_id, kick, link, expiry_secs) {
                let _ = previous.send(reason::SESSION_TAKEN_OVER);
            }
            if existing.is_persistent() {
                records.push(session_record(&existing));
                existing.set_persisted(true);
            }
            return (existing, true, records, discarded);
        }
        // Clean start: the old session ends [MQTT-3.1.2-4].
        if let Some(previous) = existing.take_owner_kick() {
            let _ = previous.send(reason::SESSION_TAKEN_OVER);
        }
        discarded.push(discard_session(broker, &existing));
    }
    let session = Arc::new(Session::new(
        Arc::clone(client_id),
        expiry_secs,
        broker.queue_limits_for(client_id),
    ));
    session.attach(conn_id, kick, link, expiry_secs);
    if let Some(replaced) = broker.sessions.insert(Arc::clone(&session)) {
        if !Arc::ptr_eq(&replaced, &session) && !replaced.is_ended() {
            // Another CONNECT raced us; its session ends too.
            if let Some(k) = replaced.take_owner_kick() {
                let _ = k.send(reason::SESSION_TAKEN_OVER);
            }
            discarded.push(discard_session(broker, &replaced));
        }
    }
    if session.is_persistent() {
        records.push(session_record(&session));
        session.set_persisted(true);
    }
    // The SessionRemove records of `discarded` are not among `records`: they are written
    // only after the dead letters of what those sessions held (see `dead_letter_remains`).
    (session, false, records, discarded)
}

/// The record holding `session`'s current state.
pub(crate) fn session_record(session: &Session) -> Record {
    Record::Session {
        client_id: session.client_id.to_string(),
        state: session.persisted_state(),
    }
}

/// A session that ended: its store record and what it still held.
pub(crate) struct Discarded {
    session: Arc<Session>,
    /// SessionRemove, if the store knew the session.
    record: Option<Record>,
    /// QoS ≥ 1 messages still queued or inflight: `session_expired` dead letters.
    pub(crate) left: Vec<Delivery>,
}

/// Ends a session: its subscriptions leave the router; the caller writes the record
/// and dead-letters what was left with [`dead_letter_remains`].
pub(crate) fn discard_session(broker: &Broker, session: &Arc<Session>) -> Discarded {
    let mut left = session.end();
    left.retain(|d| d.qos != QoS::AtMostOnce);
    broker.router.remove_session(session);
    let record = if session.is_persisted() {
        session.set_persisted(false);
        Some(Record::SessionRemove {
            client_id: session.client_id.to_string(),
        })
    } else {
        None
    };
    Discarded {
        session: Arc::clone(session),
        record,
        left,
    }
}

/// Dead-letters what ended sessions still held, waits until those dead letters are
/// durable, and returns the sessions' SessionRemove records, which may be written only now.
/// In that order a crash at any point leaves each acknowledged message in its session's
/// queue, in the dead-letter queue, or (between the two writes) in both, never in neither.
/// A session whose dead letters could not be made durable keeps its store record: after a
/// restart it is back with its queue.
pub(crate) async fn dead_letter_remains(broker: &Broker, discarded: Vec<Discarded>) -> Vec<Record> {
    let mut removals = Vec::new();
    for d in discarded {
        if !d.left.is_empty() {
            warn!(
                client_id = %d.session.client_id,
                undelivered = d.left.len(),
                "session ended with messages still queued"
            );
        }
        let mut tickets = Vec::new();
        for mut delivery in d.left {
            // The session's durable queue entries end with its SessionRemove record, so
            // they need no acks.
            delivery.durable = false;
            tickets.extend(
                broker
                    .undeliverable(&d.session, delivery, DeadLetterReason::SessionExpired)
                    .await,
            );
        }
        let mut durable = true;
        for ticket in tickets {
            if let Err(e) = ticket.wait().await {
                warn!(client_id = %d.session.client_id, error = %e,
                    "dead letters of an ended session not made durable; its record stays");
                durable = false;
            }
        }
        if durable {
            removals.extend(d.record);
        }
    }
    removals
}

/// Ends a session another node took over or replaced: dead letters for whatever it
/// still holds in `left`, then its record.
pub(crate) async fn finish_discard_now(broker: &Broker, discarded: Discarded) {
    let removals = dead_letter_remains(broker, vec![discarded]).await;
    append_records(broker, removals).await;
}

/// Writes records nobody waits for; a failure is logged (the store logs its own cause).
pub(crate) async fn append_records(broker: &Broker, records: Vec<Record>) {
    if records.is_empty() {
        return;
    }
    if let Err(e) = broker.store.append(records).await {
        debug!(error = %e, "session records not written");
    }
}

/// After the owner left: a session with expiry 0 ends now; otherwise it ends after its
/// expiry interval unless a connection resumes it first.
pub(crate) async fn end_or_schedule_expiry(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    generation: u64,
    expiry: u32,
) {
    if expiry == 0 {
        if broker.sessions.remove_if_same(session) {
            let discarded = discard_session(broker, session);
            finish_discard_now(broker, discarded).await;
        }
        return;
    }
    schedule_expiry(broker, session, generation, expiry);
}

/// Removes `session` after `expiry` seconds offline unless it is resumed first.
pub(crate) fn schedule_expiry(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    generation: u64,
    expiry: u32,
) {
    if expiry == EXPIRY_NEVER || expiry == 0 {
        return;
    }
    after_delay(
        broker,
        session,
        generation,
        expiry,
        |broker, session| async move {
            if broker.sessions.remove_if_same(&session) {
                info!(client_id = %session.client_id, "session expired");
                let discarded = discard_session(&broker, &session);
                finish_discard_now(&broker, discarded).await;
            }
        },
    );
}

/// Runs `work` after `secs` seconds if the session has not been attached or detached
/// meanwhile (its generation is unchanged) and the broker is not shutting down.
fn after_delay<F, Fut>(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    generation: u64,
    secs: u32,
    work: F,
) where
    F: FnOnce(Arc<Broker>, Arc<Session>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let broker = Arc::clone(broker);
    let session = Arc::clone(session);
    tokio::spawn(async move {
        tokio::select! {
            _ = broker.shutdown.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_secs(u64::from(secs))) => {
                if session.generation() == generation {
                    work(broker, session).await;
                }
            }
        }
    });
}

/// Publishes a will now, or after its v5 Will Delay Interval unless the session is
/// resumed first or ends sooner [MQTT-3.1.3-9]. `generation` is the session generation
/// after the owner detached (None when another connection took over).
pub(crate) async fn publish_will(
    broker: &Arc<Broker>,
    session: &Arc<Session>,
    will: LastWill,
    expiry_secs: u32,
    generation: Option<u64>,
) {
    let delay = will.delay_interval.unwrap_or(0).min(expiry_secs);
    if delay == 0 {
        send_will(broker, Arc::clone(&session.client_id), will).await;
        return;
    }
    let Some(generation) = generation else {
        // Taken over: the session lives on, so a delayed will is never due.
        return;
    };
    after_delay(
        broker,
        session,
        generation,
        delay,
        |broker, session| async move {
            send_will(&broker, Arc::clone(&session.client_id), will).await;
        },
    );
}

async fn send_will(broker: &Broker, publisher: Arc<str>, will: LastWill) {
    let now = now_ms();
    let message = Arc::new(Message {
        id: broker.next_message_id(),
        expires_at_ms: will
            .properties
            .message_expiry_interval
            .map(|s| now + u64::from(s) * 1000),
        topic: will.topic,
        payload: will.payload,
        qos: will.qos,
        retain: will.retain,
        properties: will.properties,
        publisher,
        received_at_ms: now,
    });
    debug!(topic = %message.topic, "publishing will");
    match broker.accept(&message, Vec::new()).await {
        Ok(accepted) => {
            for ticket in accepted.tickets {
                if let Err(e) = ticket.wait().await {
                    warn!(error = %e, "will not made durable");
                }
            }
        }
        Err(e) => warn!(error = %e, "will not published: store unavailable"),
    }
}
