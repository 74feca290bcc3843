//! Cross-checks against `mqttbytes` 0.6 (the customer's crate, used by rumqttc-era
//! clients): what we encode must parse there, what it encodes must decode here.

use super::*;

/// What the broker sends must parse with an independent implementation.
#[test]
fn mqttbytes_reads_what_we_encode() {
    use mqttbytes::{v4, v5};
    for p in server_packets(V311).into_iter().chain(client_packets(V311)) {
        let mut buf = BytesMut::from(&enc(&p, V311)[..]);
        match (v4::read(&mut buf, MAX), &p) {
            // mqttbytes 0.6 refuses zero-length bodies other than pings (e0 00).
            (Err(mqttbytes::Error::PayloadRequired), Packet::Disconnect(_)) => {}
            (Ok(v4::Packet::Publish(theirs)), Packet::Publish(ours)) => {
                assert_eq!(theirs.topic, ours.topic);
                assert_eq!(theirs.pkid, ours.packet_id);
                assert_eq!(theirs.payload, ours.payload);
            }
            (Ok(v4::Packet::SubAck(theirs)), Packet::SubAck(ours)) => {
                assert_eq!(theirs.pkid, ours.packet_id);
                assert_eq!(theirs.return_codes.len(), ours.reasons.len());
            }
            (Ok(theirs), ours) => {
                let theirs = format!("{theirs:?}");
                let kind = theirs.split('(').next().unwrap_or_default().to_uppercase();
                assert_eq!(kind, ours.name(), "{theirs}");
            }
            (Err(e), ours) => panic!("mqttbytes v4 refused our {ours:?}: {e:?}"),
        }
    }
    for p in server_packets(V5) {
        if matches!(
            p,
            Packet::Publish(_) | Packet::Disconnect(_) | Packet::PingResp
        ) {
            continue; // checked below / not readable by mqttbytes 0.6
        }
        let mut buf = BytesMut::from(&enc(&p, V5)[..]);
        if let Err(e) = v5::read(&mut buf, MAX) {
            panic!("mqttbytes v5 refused our {p:?}: {e:?}");
        }
    }
    let mut ours = publish(true);
    ours.topic = "a/b".into();
    ours.subscription_identifiers = vec![5];
    let mut buf = BytesMut::from(&enc(&Packet::Publish(ours.clone()), V5)[..]);
    let Ok(v5::Packet::Publish(theirs)) = v5::read(&mut buf, MAX) else {
        panic!("mqttbytes v5 refused our PUBLISH")
    };
    let tp = theirs.properties.expect("properties");
    assert_eq!(theirs.topic, ours.topic);
    assert_eq!(theirs.payload, ours.payload);
    assert_eq!(tp.topic_alias, ours.topic_alias);
    assert_eq!(tp.subscription_identifiers, vec![5]);
    assert_eq!(tp.user_properties, ours.properties.user_properties);
    assert_eq!(tp.content_type, ours.properties.content_type);
    assert_eq!(tp.correlation_data, ours.properties.correlation_data);
}

/// What an mqttbytes-based client (rumqttc) sends must decode the same way here.
#[test]
fn we_read_what_mqttbytes_encodes() {
    use mqttbytes::{v4, v5, QoS as TheirQoS};
    let mut buf = BytesMut::new();
    let mut p4 = v4::Publish::new("a/b", TheirQoS::AtLeastOnce, vec![1, 2, 3]);
    p4.pkid = 42;
    p4.retain = true;
    p4.write(&mut buf).expect("mqttbytes writes");
    // mqttbytes leaves packet id 0 in SUBSCRIBE/UNSUBSCRIBE (which we refuse).
    let mut s4 = v4::Subscribe::new("x/#", TheirQoS::ExactlyOnce);
    s4.pkid = 5;
    s4.write(&mut buf).expect("writes");
    let mut u4 = v4::Unsubscribe::new("x/#");
    u4.pkid = 6;
    u4.write(&mut buf).expect("writes");
    v4::PubAck::new(42).write(&mut buf).expect("writes");
    v4::PingReq.write(&mut buf).expect("writes");

    let mut got = Vec::new();
    while let Some(p) = decode(&mut buf, Some(V311), MAX).expect("decodes") {
        got.push(p);
    }
    let Packet::Publish(p) = &got[0] else {
        panic!()
    };
    assert_eq!(
        (p.topic.as_str(), p.packet_id, p.retain, &p.payload[..]),
        ("a/b", 42, true, &[1u8, 2, 3][..])
    );
    let Packet::Subscribe(s) = &got[1] else {
        panic!()
    };
    assert_eq!(
        (s.filters[0].filter.as_str(), s.filters[0].options.qos),
        ("x/#", QoS::ExactlyOnce)
    );
    let Packet::Unsubscribe(u) = &got[2] else {
        panic!()
    };
    assert_eq!(u.filters, vec!["x/#".to_string()]);
    assert_eq!(got[3], Packet::PubAck(PubResponse::success(42)));
    assert_eq!(got[4], Packet::PingReq);

    let mut buf = BytesMut::new();
    let mut p5 = v5::Publish::new("a/b", TheirQoS::AtLeastOnce, "hi");
    p5.pkid = 7;
    p5.properties = Some(v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(10),
        topic_alias: Some(2),
        response_topic: Some("r".into()),
        correlation_data: Some(Bytes::from_static(b"c")),
        user_properties: vec![("k".into(), "v".into())],
        subscription_identifiers: vec![],
        content_type: Some("t".into()),
    });
    p5.write(&mut buf).expect("writes");
    let mut s5 = v5::Subscribe::new("f/+", TheirQoS::AtLeastOnce);
    s5.pkid = 3;
    s5.write(&mut buf).expect("writes");
    let Some(Packet::Publish(p)) = decode(&mut buf, Some(V5), MAX).expect("decodes") else {
        panic!()
    };
    assert_eq!(
        (p.topic.as_str(), p.packet_id, p.topic_alias),
        ("a/b", 7, Some(2))
    );
    assert_eq!(p.properties.message_expiry_interval, Some(10));
    assert_eq!(p.properties.content_type.as_deref(), Some("t"));
    let Some(Packet::Subscribe(s)) = decode(&mut buf, Some(V5), MAX).expect("decodes") else {
        panic!()
    };
    assert_eq!((s.packet_id, s.filters[0].filter.as_str()), (3, "f/+"));
}
