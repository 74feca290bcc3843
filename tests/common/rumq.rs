//! rumqttc v4 (3.1.1) and v5 clients whose event loop runs in a background task that
//! forwards every incoming packet (and the end of the connection) to a channel.

use super::WAIT;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// What the background task forwards.
#[derive(Debug, Clone)]
pub enum Ev<P> {
    Packet(P),
    /// The event loop returned an error; the task stopped (no reconnect).
    Closed(String),
}

/// Incoming events with a stash, so waiting for one kind of packet loses no other.
pub struct Inbox<P> {
    rx: mpsc::UnboundedReceiver<Ev<P>>,
    stash: VecDeque<Ev<P>>,
    task: JoinHandle<()>,
}

impl<P: std::fmt::Debug> Inbox<P> {
    /// Waits up to `dur` for the first event `f` accepts, removing it.
    pub async fn try_wait<T>(
        &mut self,
        dur: Duration,
        mut f: impl FnMut(&Ev<P>) -> Option<T>,
    ) -> Option<T> {
        for i in 0..self.stash.len() {
            if let Some(v) = f(&self.stash[i]) {
                self.stash.remove(i);
                return Some(v);
            }
        }
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) | Ok(None) => return None,
                Ok(Some(ev)) => {
                    if let Some(v) = f(&ev) {
                        return Some(v);
                    }
                    self.stash.push_back(ev);
                }
            }
        }
    }

    /// Like [`Inbox::try_wait`] with the default timeout; panics naming `what`.
    pub async fn wait<T>(&mut self, what: &str, f: impl FnMut(&Ev<P>) -> Option<T>) -> T {
        match self.try_wait(WAIT, f).await {
            Some(v) => v,
            None => panic!(
                "timed out waiting for {what}; other events: {:?}",
                self.stash
            ),
        }
    }

    /// Waits for the connection to end; returns the error text.
    pub async fn closed(&mut self) -> String {
        self.wait("the connection to close", |e| match e {
            Ev::Closed(why) => Some(why.clone()),
            _ => None,
        })
        .await
    }
}

impl<P> Drop for Inbox<P> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------- v4 (MQTT 3.1.1)

pub mod v4 {
    use super::*;
    #[allow(unused_imports)]
    pub use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, Publish, QoS};

    pub struct Client {
        pub client: AsyncClient,
        pub inbox: Inbox<Packet>,
    }

    pub fn options(port: u16, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// Connects with `opts` and waits for CONNACK; returns the client and session present.
    pub async fn connect_with(opts: MqttOptions) -> (Client, bool) {
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ev::Packet(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Ev::Closed(format!("{e:?}")));
                        return;
                    }
                }
            }
        });
        let mut c = Client {
            client,
            inbox: Inbox {
                rx,
                stash: VecDeque::new(),
                task,
            },
        };
        let present = c
            .inbox
            .wait("CONNACK", |e| match e {
                Ev::Packet(Packet::ConnAck(a)) => Some(Ok(a.session_present)),
                Ev::Closed(why) => Some(Err(why.clone())),
                _ => None,
            })
            .await
            .unwrap_or_else(|why| panic!("v4 connect failed: {why}"));
        (c, present)
    }

    /// A clean-session client.
    pub async fn connect(port: u16, id: &str) -> Client {
        connect_with(options(port, id)).await.0
    }

    impl Client {
        /// Subscribes and waits for the SUBACK; returns its return codes.
        pub async fn subscribe(
            &mut self,
            filter: &str,
            qos: QoS,
        ) -> Vec<rumqttc::SubscribeReasonCode> {
            self.client.subscribe(filter, qos).await.expect("subscribe");
            self.inbox
                .wait("SUBACK", |e| match e {
                    Ev::Packet(Packet::SubAck(a)) => Some(a.return_codes.clone()),
                    _ => None,
                })
                .await
        }

        /// Publishes and, for QoS 1/2, waits for the PUBACK/PUBCOMP.
        pub async fn publish(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.client
                .publish(topic, qos, retain, payload.into())
                .await
                .expect("publish");
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.inbox
                        .wait("PUBACK", |e| {
                            matches!(e, Ev::Packet(Packet::PubAck(_))).then_some(())
                        })
                        .await
                }
                QoS::ExactlyOnce => {
                    self.inbox
                        .wait("PUBCOMP", |e| {
                            matches!(e, Ev::Packet(Packet::PubComp(_))).then_some(())
                        })
                        .await
                }
            }
        }

        pub async fn recv(&mut self) -> Publish {
            self.inbox
                .wait("PUBLISH", |e| match e {
                    Ev::Packet(Packet::Publish(p)) => Some(p.clone()),
                    _ => None,
                })
                .await
        }

        pub async fn try_recv(&mut self, dur: Duration) -> Option<Publish> {
            self.inbox
                .try_wait(dur, |e| match e {
                    Ev::Packet(Packet::Publish(p)) => Some(p.clone()),
                    _ => None,
                })
                .await
        }

        /// Sends DISCONNECT and waits for the event loop to end.
        pub async fn disconnect(mut self) {
            self.client.disconnect().await.expect("disconnect");
            let _ = self
                .inbox
                .try_wait(WAIT, |e| matches!(e, Ev::Closed(_)).then_some(()))
                .await;
        }
    }
}

// ---------------------------------------------------------------- v5

pub mod v5 {
    use super::*;
    #[allow(unused_imports)]
    pub use rumqttc::v5::mqttbytes::v5::{
        ConnectProperties, Filter, LastWill, LastWillProperties, Packet, Publish,
        PublishProperties, RetainForwardRule, SubscribeProperties,
    };
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

    pub struct Client {
        pub client: AsyncClient,
        pub inbox: Inbox<Packet>,
    }

    pub fn options(port: u16, id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o
    }

    /// Connects and waits for CONNACK; returns the client and the CONNACK.
    pub async fn connect_with(opts: MqttOptions) -> (Client, rumqttc::v5::mqttbytes::v5::ConnAck) {
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(p)) => {
                        if tx.send(Ev::Packet(p)).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => {
                        let why = match &e {
                            ConnectionError::MqttState(StateError::ServerDisconnect {
                                reason_code,
                                ..
                            }) => format!("ServerDisconnect({:#04x}) {e:?}", *reason_code as u8),
                            _ => format!("{e:?}"),
                        };
                        let _ = tx.send(Ev::Closed(why));
                        return;
                    }
                }
            }
        });
        let mut c = Client {
            client,
            inbox: Inbox {
                rx,
                stash: VecDeque::new(),
                task,
            },
        };
        let ack = c
            .inbox
            .wait("CONNACK", |e| match e {
                Ev::Packet(Packet::ConnAck(a)) => Some(Ok(a.clone())),
                Ev::Closed(why) => Some(Err(why.clone())),
                _ => None,
            })
            .await
            .unwrap_or_else(|why| panic!("v5 connect failed: {why}"));
        (c, ack)
    }

    pub async fn connect(port: u16, id: &str) -> Client {
        connect_with(options(port, id)).await.0
    }

    impl Client {
        /// Subscribes and waits for the SUBACK.
        pub async fn subscribe(&mut self, filter: &str, qos: QoS) {
            self.client.subscribe(filter, qos).await.expect("subscribe");
            self.wait_suback().await;
        }

        pub async fn subscribe_filter(
            &mut self,
            filter: Filter,
            props: Option<SubscribeProperties>,
        ) {
            match props {
                Some(p) => {
                    self.client
                        .subscribe_many_with_properties(vec![filter], p)
                        .await
                }
                None => self.client.subscribe_many(vec![filter]).await,
            }
            .expect("subscribe");
            self.wait_suback().await;
        }

        async fn wait_suback(&mut self) {
            self.inbox
                .wait("SUBACK", |e| match e {
                    Ev::Packet(Packet::SubAck(_)) => Some(Ok(())),
                    Ev::Closed(why) => Some(Err(why.clone())),
                    _ => None,
                })
                .await
                .unwrap_or_else(|why| panic!("subscribe failed: {why}"));
        }

        /// Publishes; for QoS 1/2 waits for the PUBACK/PUBCOMP.
        pub async fn publish(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
        ) {
            self.publish_with(topic, qos, retain, payload, None).await
        }

        pub async fn publish_with(
            &mut self,
            topic: &str,
            qos: QoS,
            retain: bool,
            payload: impl Into<Vec<u8>>,
            props: Option<PublishProperties>,
        ) {
            let payload: Vec<u8> = payload.into();
            match props {
                Some(p) => {
                    self.client
                        .publish_with_properties(topic, qos, retain, payload, p)
                        .await
                }
                None => self.client.publish(topic, qos, retain, payload).await,
            }
            .expect("publish");
            match qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => {
                    self.inbox
                        .wait("PUBACK", |e| {
                            matches!(e, Ev::Packet(Packet::PubAck(_))).then_some(())
                        })
                        .await
                }
                QoS::ExactlyOnce => {
                    self.inbox
                        .wait("PUBCOMP", |e| {
                            matches!(e, Ev::Packet(Packet::PubComp(_))).then_some(())
                        })
                        .await
                }
            }
        }

        pub async fn recv(&mut self) -> Publish {
            self.inbox
                .wait("PUBLISH", |e| match e {
                    Ev::Packet(Packet::Publish(p)) => Some(p.clone()),
                    _ => None,
                })
                .await
        }

        pub async fn try_recv(&mut self, dur: Duration) -> Option<Publish> {
            self.inbox
                .try_wait(dur, |e| match e {
                    Ev::Packet(Packet::Publish(p)) => Some(p.clone()),
                    _ => None,
                })
                .await
        }

        pub async fn disconnect(mut self) {
            self.client.disconnect().await.expect("disconnect");
            let _ = self
                .inbox
                .try_wait(WAIT, |e| matches!(e, Ev::Closed(_)).then_some(()))
                .await;
        }
    }
}
