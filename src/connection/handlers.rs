//! What the reader does with each packet after CONNECT: PUBLISH (accept, make durable,
//! queue the ack), the acks of both flows, SUBSCRIBE/UNSUBSCRIBE, PINGREQ, DISCONNECT.

use super::writer::Outbound;
use super::*;
use crate::broker::DelayRefusal;
use crate::delayed::{self, DelayError};

/// PUBACK answers only QoS 1 and PUBREC only QoS 2 (MQTT 5 §4.3.2, §4.3.3): the other
/// is a protocol error, and the connection closes (v5: DISCONNECT 0x82).
fn wrong_ack(packet: &str, packet_id: u16, qos: &str) -> Exit {
    Exit::Refused {
        code: reason::PROTOCOL_ERROR,
        why: format!(
            "{packet} for packet id {packet_id}, a {qos} delivery (MQTT 5 §4.3.2, §4.3.3)"
        ),
    }
}

/// What is left to do with a PUBLISH after [`Connection::on_publish`].
pub(super) enum PublishNext {
    /// Nothing (answered or refused); why to stop, if it must.
    Done(Option<Exit>),
    /// Route it with [`Connection::route`].
    Route(Routing),
    /// Not a PUBLISH: for [`Connection::handle`].
    Other(Box<Packet>),
}

/// A checked PUBLISH on its way to the router.
pub(super) struct Routing {
    message: Arc<Message>,
    /// Store records to commit with it (the inbound QoS 2 id).
    extra: Vec<Record>,
    /// The client's packet id, for the ack.
    packet_id: u16,
    /// A `$delayed/` publish: its due time (Unix ms), or why it is refused (boxed: the
    /// routing is part of every connection's task while a publish is stored).
    delay: Option<Result<u64, Box<DelayError>>>,
}

impl Connection {
    /// Handles one packet; returns why to stop, if it must.
    pub(super) async fn handle(
        &mut self,
        packet: Packet,
        broker: &Arc<Broker>,
        ob: &mut Outbound,
    ) -> Option<Exit> {
        match packet {
            Packet::Publish(p) => {
                return match self.on_publish(p, broker, ob) {
                    PublishNext::Done(exit) => exit,
                    PublishNext::Route(routing) => self.route(routing, broker, ob).await,
                    PublishNext::Other(_) => None,
                }
            }
            Packet::PubAck(a)
                if self.session.inflight_qos(a.packet_id) == Some(QoS::ExactlyOnce) =>
            {
                return Some(wrong_ack("PUBACK", a.packet_id, "QoS 2"))
            }
            Packet::PubRec(a)
                if self.session.inflight_qos(a.packet_id) == Some(QoS::AtLeastOnce) =>
            {
                return Some(wrong_ack("PUBREC", a.packet_id, "QoS 1"))
            }
            Packet::PubAck(a) => match self.session.puback(a.packet_id) {
                Some(done) if done.durable => broker.ack_durable(&self.session, &done).await,
                Some(_) => {}
                None => debug!(packet_id = a.packet_id, "PUBACK for unknown packet id"),
            },
            Packet::PubRec(a) => {
                let known = self.session.pubrec(a.packet_id);
                let code = if known {
                    reason::SUCCESS
                } else {
                    reason::PACKET_IDENTIFIER_NOT_FOUND
                };
                let rel = Ack::new(AckKind::Rel, a.packet_id, code);
                // A PUBREC with an error code ends the flow: no PUBREL (MQTT 5 §4.3.3).
                if a.reason >= 0x80 {
                    if let Some(done) = self.session.pubcomp(a.packet_id) {
                        if done.durable {
                            broker.ack_durable(&self.session, &done).await;
                        }
                    }
                } else {
                    if let Some(message_id) = self.session.released_durable(a.packet_id) {
                        // Lazily: if it is lost, a restart resends the PUBLISH with the
                        // same packet id and DUP, which the subscriber answers with
                        // PUBREC again without delivering twice [MQTT-4.3.3-10].
                        let stage = Record::Outbound {
                            session: self.client_id.to_string(),
                            message_id,
                            packet_id: a.packet_id,
                            released: true,
                        };
                        append_records(broker, vec![stage]).await;
                    }
                    ob.packet(&rel.packet());
                }
            }
            Packet::PubComp(a) => match self.session.pubcomp(a.packet_id) {
                Some(done) if done.durable => broker.ack_durable(&self.session, &done).await,
                Some(_) => {}
                None => debug!(packet_id = a.packet_id, "PUBCOMP for unknown packet id"),
            },
            Packet::PubRel(a) => {
                let mut comp = Ack::new(AckKind::Comp, a.packet_id, reason::SUCCESS);
                let mut tickets = Vec::new();
                if !self.session.release_inbound_qos2(a.packet_id) {
                    comp.reason = reason::PACKET_IDENTIFIER_NOT_FOUND;
                } else if self.session.is_persisted() {
                    // PUBCOMP frees the packet id for the client's next message, so the
                    // release must be durable first: a restart that still remembered
                    // the id would take the next message with that id for a resend and
                    // drop it.
                    let released = Record::Qos2Released {
                        session: self.client_id.to_string(),
                        packet_id: a.packet_id,
                    };
                    match broker.store.submit(vec![released]).await {
                        Ok(t) => tickets.push(t),
                        Err(e) => {
                            return Some(Exit::Refused {
                                code: reason::UNSPECIFIED_ERROR,
                                why: format!("QoS 2 release not stored: {e}"),
                            })
                        }
                    }
                }
                ob.ack(tickets, comp);
            }
            Packet::Subscribe(s) => return self.on_subscribe(s, broker, ob).await,
            Packet::Unsubscribe(u) => return self.on_unsubscribe(u, broker, ob).await,
            Packet::PingReq => ob.packet(&Packet::PingResp),
            Packet::Disconnect(d) => {
                if let Some(expiry) = d.session_expiry_interval {
                    if self.expiry_secs == 0 && expiry != 0 {
                        return Some(Exit::Refused {
                            code: reason::PROTOCOL_ERROR,
                            why: "[MQTT-3.14.2-2] session expiry set on DISCONNECT after 0 in CONNECT".into(),
                        });
                    }
                    self.expiry_secs = expiry;
                    self.session.set_expiry_secs(expiry);
                    if self.session.is_persisted() && expiry != 0 {
                        append_records(broker, vec![session_record(&self.session)]).await;
                    }
                }
                return Some(Exit::Disconnect {
                    will: d.reason == reason::DISCONNECT_WITH_WILL,
                });
            }
            Packet::Auth(_) => {
                return Some(Exit::Refused {
                    code: reason::PROTOCOL_ERROR,
                    why: "[MQTT-4.12.0-1] AUTH without an authentication method in CONNECT".into(),
                })
            }
            other => {
                return Some(Exit::Refused {
                    code: reason::PROTOCOL_ERROR,
                    why: format!("[MQTT-2.1.2] a client may not send {}", other.name()),
                })
            }
        }
        None
    }

    /// Checks a PUBLISH and turns it into a message to route. Synchronous, so the
    /// packet's space is not part of the connection's future: only [`Self::route`],
    /// which holds little, waits.
    pub(super) fn on_publish(
        &mut self,
        mut p: Publish,
        broker: &Arc<Broker>,
        ob: &mut Outbound,
    ) -> PublishNext {
        let limits = &broker.config.limits;
        metric::hot().received(p.qos, p.payload.len());
        if let Some(alias) = p.topic_alias.take() {
            if alias == 0 || alias > limits.topic_alias_maximum {
                metrics::counter!(metric::CLIENT_LIMITS_EXCEEDED, "limit" => "topic_alias")
                    .increment(1);
                return PublishNext::Done(Some(Exit::Refused {
                    code: reason::TOPIC_ALIAS_INVALID,
                    why: format!(
                        "[MQTT-3.3.2-9] topic alias {alias} outside 1..={}",
                        limits.topic_alias_maximum
                    ),
                }));
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        metrics::counter!(metric::CLIENT_LIMITS_EXCEEDED, "limit" => "topic_alias")
                            .increment(1);
                        return PublishNext::Done(Some(Exit::Refused {
                            code: reason::PROTOCOL_ERROR,
                            why: format!("topic alias {alias} was never set (MQTT 5 §3.3.2.3.4)"),
                        }));
                    }
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        if let Err(e) = topic::validate_topic_name(&p.topic, limits.max_topic_levels) {
            return PublishNext::Done(Some(Exit::Refused {
                code: reason::TOPIC_NAME_INVALID,
                why: e.to_string(),
            }));
        }
        // `$delayed/<seconds>/<topic>`: from here on the message is its target topic's
        // (the `$` rule and the ACL apply to that), to be published when due.
        let delayed = &broker.config.delayed;
        let mut delay = None;
        if delayed.enabled {
            match delayed::parse(&p.topic, delayed.max_delay_secs) {
                None => {}
                Some(Ok((secs, target))) => {
                    p.topic = target.to_owned();
                    delay = Some(Ok(now_ms() + u64::from(secs) * 1000));
                }
                Some(Err(e)) => delay = Some(Err(Box::new(e))),
            }
        }
        let mut extra = Vec::new();
        if p.qos == QoS::ExactlyOnce {
            if self.session.is_awaiting_release(p.packet_id) {
                // A resent PUBLISH whose first copy we already routed [MQTT-4.3.3-10].
                let rec = Ack::new(AckKind::Rec, p.packet_id, reason::SUCCESS);
                ob.ack(Vec::new(), rec);
                return PublishNext::Done(None);
            }
            // Checked before the id is remembered, so a refused message's resend is
            // routed rather than mistaken for a duplicate.
            if self.session.inbound_qos2_count() >= usize::from(limits.receive_maximum) {
                metrics::counter!(metric::CLIENT_LIMITS_EXCEEDED, "limit" => "receive_maximum")
                    .increment(1);
                return PublishNext::Done(Some(Exit::Refused {
                    code: reason::RECEIVE_MAXIMUM_EXCEEDED,
                    why: format!(
                        "[MQTT-3.3.4-9] more than receive_maximum {} QoS 2 messages unreleased",
                        limits.receive_maximum
                    ),
                }));
            }
            self.session.begin_inbound_qos2(p.packet_id);
            if self.session.is_persistent() {
                // Remembered across a restart, so a resent copy is not routed twice.
                extra.push(Record::Qos2Received {
                    session: self.client_id.to_string(),
                    packet_id: p.packet_id,
                });
            }
        }
        let (qos, packet_id) = (p.qos, p.packet_id);
        let code = if matches!(delay, Some(Err(_))) {
            // Refused in `route`, which may dead-letter it.
            return PublishNext::Route(Routing {
                message: self.message_from(p, broker),
                extra,
                packet_id,
                delay,
            });
        } else if p.topic.starts_with('$') {
            // `$` topics are the broker's ($SYS, $DLQ): clients may read, not write.
            warn!(topic = %p.topic, "PUBLISH to a reserved '$' topic refused");
            reason::NOT_AUTHORIZED
        } else if !broker.auth_files().may_write(
            &self.client_id,
            self.username.as_deref(),
            &p.topic,
        ) {
            // v5 learns why from the ack; 3.x gets a normal ack and the message is
            // dropped, as mosquitto does.
            metrics::counter!(metric::ACL_DENIED, "access" => "write").increment(1);
            warn!(topic = %p.topic, "PUBLISH denied by the ACL");
            reason::NOT_AUTHORIZED
        } else {
            return PublishNext::Route(Routing {
                message: self.message_from(p, broker),
                extra,
                packet_id,
                delay,
            });
        };
        PublishNext::Done(self.answer_publish(qos, packet_id, code, Vec::new(), ob))
    }

    /// Routes an accepted PUBLISH (store, then the subscribers' queues) and queues its
    /// ack behind the commit.
    pub(super) async fn route(
        &mut self,
        routing: Routing,
        broker: &Arc<Broker>,
        ob: &mut Outbound,
    ) -> Option<Exit> {
        let Routing {
            message,
            extra,
            packet_id,
            delay,
        } = routing;
        let qos = message.qos;
        let mut code = reason::SUCCESS;
        let mut tickets = Vec::new();
        if let Some(delay) = delay {
            // Boxed, like every rare path here: its state would otherwise grow every
            // connection's task.
            return Box::pin(self.route_delayed(message, extra, packet_id, delay, broker, ob))
                .await;
        }
        let accepted = broker.accept(&message, extra).await;
        match accepted {
            Ok(accepted) => {
                if accepted.matched == 0 {
                    code = reason::NO_MATCHING_SUBSCRIBERS;
                }
                tickets = accepted.tickets;
            }
            Err(e) => {
                warn!(error = %e, topic = %message.topic, "message not accepted: store unavailable");
                if !self.version.is_v5() && qos != QoS::AtMostOnce {
                    return Some(Exit::Refused {
                        code: reason::UNSPECIFIED_ERROR,
                        why: "the store failed; the message was not acknowledged".into(),
                    });
                }
                code = match e {
                    crate::store::StoreError::DiskFull => reason::QUOTA_EXCEEDED,
                    _ => reason::UNSPECIFIED_ERROR,
                };
            }
        }
        self.answer_publish(qos, packet_id, code, tickets, ob)
    }

    /// A `$delayed/` publish: scheduled (its ack behind the store) or refused.
    async fn route_delayed(
        &mut self,
        message: Arc<Message>,
        extra: Vec<Record>,
        packet_id: u16,
        delay: Result<u64, Box<DelayError>>,
        broker: &Arc<Broker>,
        ob: &mut Outbound,
    ) -> Option<Exit> {
        let qos = message.qos;
        let why = match delay {
            Ok(due_ms) => match broker.delay(&message, due_ms, extra).await {
                Ok(tickets) => {
                    return self.answer_publish(qos, packet_id, reason::SUCCESS, tickets, ob)
                }
                Err(DelayRefusal::Refused(e)) => Box::new(e),
                Err(DelayRefusal::Store(e)) => {
                    warn!(error = %e, topic = %message.topic, "delayed message not accepted: store unavailable");
                    if !self.version.is_v5() && qos != QoS::AtMostOnce {
                        return Some(Exit::Refused {
                            code: reason::UNSPECIFIED_ERROR,
                            why: "the store failed; the message was not acknowledged".into(),
                        });
                    }
                    let code = match e {
                        crate::store::StoreError::DiskFull => reason::QUOTA_EXCEEDED,
                        _ => reason::UNSPECIFIED_ERROR,
                    };
                    return self.answer_publish(qos, packet_id, code, Vec::new(), ob);
                }
            },
            Err(why) => why,
        };
        self.refuse_delayed(message, packet_id, why, broker, ob)
            .await
    }

    /// A `$delayed/` publish that cannot be taken: a v5 publisher learns why from the
    /// ack (0x97 when too many wait or the delay is too long, 0x90 for a malformed
    /// topic); a 3.x publisher's QoS ≥ 1 message becomes a `delay_refused` dead letter
    /// (3.x acks cannot refuse), so it is never silently gone.
    async fn refuse_delayed(
        &mut self,
        message: Arc<Message>,
        packet_id: u16,
        why: Box<DelayError>,
        broker: &Arc<Broker>,
        ob: &mut Outbound,
    ) -> Option<Exit> {
        metrics::counter!(metric::DELAYED_REFUSED).increment(1);
        debug!(topic = %message.topic, reason = %why, "delayed publish refused");
        let qos = message.qos;
        if self.version.is_v5() {
            let code = match *why {
                DelayError::NotSeconds(_) | DelayError::NoTopic => reason::TOPIC_NAME_INVALID,
                DelayError::TooLong { .. } | DelayError::Full(_) => reason::QUOTA_EXCEEDED,
            };
            return self.answer_publish(qos, packet_id, code, Vec::new(), ob);
        }
        let mut tickets = Vec::new();
        if qos != QoS::AtMostOnce {
            let ctx = crate::dead_letter::Context {
                reason: crate::dead_letter::DeadLetterReason::DelayRefused,
                subscriber: None,
                attempts: 0,
            };
            tickets = broker.dead_letter(&message, ctx).await;
        }
        self.answer_publish(qos, packet_id, reason::SUCCESS, tickets, ob)
    }

    /// Queues the PUBACK/PUBREC for a PUBLISH (none for QoS 0), behind `tickets`.
    fn answer_publish(
        &mut self,
        qos: QoS,
        packet_id: u16,
        code: u8,
        tickets: Vec<crate::store::CommitTicket>,
        ob: &mut Outbound,
    ) -> Option<Exit> {
        let kind = match qos {
            // A QoS 0 message needs no answer; a retained one is stored without waiting.
            QoS::AtMostOnce => return None,
            QoS::AtLeastOnce => AckKind::Ack,
            QoS::ExactlyOnce => {
                if code >= 0x80 {
                    // Refused: the flow ends here, no PUBREL will come.
                    self.session.release_inbound_qos2(packet_id);
                }
                AckKind::Rec
            }
        };
        ob.ack(tickets, Ack::new(kind, packet_id, code));
        None
    }

    /// The message a client's PUBLISH becomes.
    fn message_from(&self, p: Publish, broker: &Broker) -> Arc<Message> {
        let now = now_ms();
        Arc::new(Message {
            id: broker.next_message_id(),
            expires_at_ms: p
                .properties
                .message_expiry_interval
                .map(|s| now + u64::from(s) * 1000),
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
            publisher: Arc::clone(&self.client_id),
            received_at_ms: now,
        })
    }

    /// Commits the session's state if it is persistent (before SUBACK/UNSUBACK).
    async fn persist_session(&self, broker: &Arc<Broker>) -> Option<Exit> {
        if !self.session.is_persistent() {
            return None;
        }
        match broker
            .store
            .commit(vec![session_record(&self.session)])
            .await
        {
            Ok(()) => {
                self.session.set_persisted(true);
                None
            }
            Err(e) => Some(Exit::Refused {
                code: reason::UNSPECIFIED_ERROR,
                why: format!("session state not stored: {e}"),
            }),
        }
    }

    async fn on_subscribe(
        &mut self,
        s: Subscribe,
        broker: &Arc<Broker>,
        ob: &mut Outbound,
    ) -> Option<Exit> {
        let limits = &broker.config.limits;
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut retained = Vec::new();
        for f in &s.filters {
            let shared = f.filter.starts_with("$share/");
            if shared && f.options.no_local && self.version.is_v5() {
                return Some(Exit::Refused {
                    code: reason::PROTOCOL_ERROR,
                    why: "[MQTT-3.8.3-4] no local on a shared subscription".into(),
                });
            }
            let record = SubscriptionRecord {
                options: f.options,
                identifier: s.subscription_identifier,
            };
            if !broker.auth_files().may_subscribe(
                &self.client_id,
                self.username.as_deref(),
                &f.filter,
            ) {
                metrics::counter!(metric::ACL_DENIED, "access" => "subscribe").increment(1);
                warn!(filter = %f.filter, "SUBSCRIBE denied by the ACL");
                reasons.push(reason::NOT_AUTHORIZED);
                continue;
            }
            let existing = self.session.has_subscription(&f.filter);
            if !existing && self.session.subscription_count() >= limits.max_subscriptions_per_client
            {
                metrics::counter!(metric::CLIENT_LIMITS_EXCEEDED, "limit" => "subscriptions")
                    .increment(1);
                warn!(filter = %f.filter, "subscription refused: max_subscriptions_per_client");
                reasons.push(reason::QUOTA_EXCEEDED);
                continue;
            }
            match broker.router.subscribe(
                &self.session,
                &f.filter,
                f.options,
                s.subscription_identifier,
            ) {
                Ok(_) => {}
                Err(e) => {
                    info!(filter = %f.filter, error = %e, "subscription refused");
                    reasons.push(reason::TOPIC_FILTER_INVALID);
                    continue;
                }
            }
            let existed = self.session.add_subscription(&f.filter, record);
            reasons.push(f.options.qos as u8);
            let send_retained = !shared
                && match f.options.retain_handling {
                    0 => true,
                    1 => !existed,
                    _ => false,
                };
            if send_retained {
                retained.push((broker.router.retained_matching(&f.filter), f.options.qos));
            }
        }
        // A granted subscription of a persistent session survives a restart.
        if let Some(exit) = self.persist_session(broker).await {
            return Some(exit);
        }
        // In a cluster, the SUBACK waits until NATS routes the new filters here.
        if let Some(cluster) = broker.cluster() {
            Box::pin(cluster.sync()).await;
        }
        let ack = Packet::SubAck(SubAck {
            packet_id: s.packet_id,
            reasons,
            reason_string: None,
            user_properties: Vec::new(),
        });
        ob.packet(&ack);
        // Offered after the SUBACK is encoded, so they reach the client after it.
        let ids: Vec<u32> = s.subscription_identifier.into_iter().collect();
        for (messages, qos) in retained {
            self.session.offer_retained(messages, qos, ids.clone());
        }
        None
    }

    async fn on_unsubscribe(
        &mut self,
        u: Unsubscribe,
        broker: &Arc<Broker>,
        ob: &mut Outbound,
    ) -> Option<Exit> {
        let mut reasons = Vec::with_capacity(u.filters.len());
        for f in &u.filters {
            let had = self.session.remove_subscription(f);
            broker.router.unsubscribe(&self.session.client_id, f);
            reasons.push(if had {
                reason::SUCCESS
            } else {
                reason::NO_SUBSCRIPTION_EXISTED
            });
        }
        if let Some(exit) = self.persist_session(broker).await {
            return Some(exit);
        }
        let ack = Packet::UnsubAck(UnsubAck {
            packet_id: u.packet_id,
            reasons,
            reason_string: None,
            user_properties: Vec::new(),
        });
        ob.packet(&ack);
        None
    }
}
