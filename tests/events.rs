//! The event stream on real clusters (in-process servers, real sled, real
//! tarpc): events are the same on every replica, a subscription moves
//! between nodes without a gap or a duplicate, a named consumer resumes
//! after a restart, a reader behind retention is told so, observers inside
//! a node never block apply, and every limit a reader controls is refused
//! with a clear error.

mod common;

use std::collections::BTreeSet;

use common::{admin_key, eventually, Servers, WAIT};
use garrison_client::api::ApiError;
use garrison_client::events::{
    Cursor, EventBody, EventFilter, EventQuery, EventType, StartAt, StreamEvent,
    MAX_EVENTS_PER_READ, MAX_EVENT_WAIT_MS, MAX_FILTER_TERMS, MAX_LOCATIONS_PER_EVENT_READ,
};
use garrison_client::{Client, ClientError, Op, Player, Value};

const LOCATION: &str = "hill";

fn put(entity: &str, hp: i64) -> Op {
    Op::Put {
        entity: entity.into(),
        fields: vec![("hp".into(), Value::Int(hp))],
    }
}

fn emit(kind: &str, n: i64) -> Op {
    Op::Emit {
        kind: kind.into(),
        fields: vec![("n".into(), Value::Int(n))],
    }
}

fn all_after(cursor: Cursor) -> EventQuery {
    EventQuery {
        locations: vec![(LOCATION.into(), StartAt::After(cursor))],
        filter: EventFilter::default(),
        max_events: MAX_EVENTS_PER_READ,
        wait_ms: 0,
        linger_ms: 0,
    }
}

/// Every event `client` can read from the start, polling until there are
/// at least `at_least`.
async fn read_all(client: &Client, at_least: usize) -> Vec<StreamEvent> {
    let mut events: Vec<StreamEvent> = Vec::new();
    let mut cursor = Cursor::START;
    let started = std::time::Instant::now();
    while events.len() < at_least {
        assert!(started.elapsed() < WAIT, "only {} events", events.len());
        let mut query = all_after(cursor);
        query.wait_ms = 200;
        let batch = client.read_events(&query).await.expect("read events");
        cursor = batch.cursor(LOCATION).expect("a cursor for the location");
        events.extend(batch.events);
    }
    events
}

fn is_outcome(e: &StreamEvent) -> bool {
    matches!(
        e.body,
        EventBody::Committed { .. } | EventBody::Rejected { .. }
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn events_are_identical_on_every_replica_and_in_what_check_compares() {
    let servers = Servers::start(3, "events-same").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut admin = Player::new(admin_key());
    let mut player = Player::new(garrison_client::Keypair::from_seed([5; 32]));
    for i in 0..10 {
        admin
            .transact(
                &client,
                LOCATION,
                vec![put(&format!("unit/{i}"), i), emit("attack", i)],
            )
            .await
            .unwrap();
        // A player may not emit (the default roles): a rejection event.
        player
            .transact(&client, LOCATION, vec![emit("capture", i)])
            .await
            .unwrap();
    }
    // Per admin transaction: created, emitted, committed; per player's:
    // rejected. 10 * 4 events.
    let mut streams = Vec::new();
    for i in 0..3 {
        let pinned = servers.pinned_client(i).await;
        streams.push(read_all(&pinned, 40).await);
    }
    assert_eq!(streams[0].len(), 40, "{:#?}", streams[0]);
    assert_eq!(streams[0], streams[1]);
    assert_eq!(streams[0], streams[2]);
    let types: Vec<EventType> = streams[0][..4]
        .iter()
        .map(|e| e.body.event_type())
        .collect();
    assert_eq!(
        types,
        [
            EventType::Created,
            EventType::Emitted,
            EventType::Committed,
            EventType::Rejected
        ]
    );
    match &streams[0][3].body {
        EventBody::Rejected { reason, .. } => {
            assert!(reason.to_string().contains("emit"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    // The retained events are part of the state the replicas compare.
    let group = common::group_of(&client, LOCATION).await;
    eventually("every replica reports the same state digest", || async {
        let mut digests = BTreeSet::new();
        for s in &servers.servers {
            let node = &s.as_ref().unwrap().node;
            let r = node.consistency(group, None).unwrap();
            digests.insert((r.applied_index, r.state_digest));
        }
        digests.len() == 1
    })
    .await;
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscription_moves_to_another_node_without_a_gap_or_a_duplicate() {
    let mut servers = Servers::start(3, "events-move").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let watcher = servers.client().await;
    let mut subscription = watcher.subscribe(
        vec![(LOCATION.into(), StartAt::After(Cursor::START))],
        EventFilter {
            types: vec![EventType::Committed],
            ..Default::default()
        },
    );
    subscription.wait_ms = 500;
    let mut admin = Player::new(admin_key());
    let mut receipts = Vec::new();
    let mut seen = Vec::new();
    let group = common::group_of(&client, LOCATION).await;
    for round in 0..3 {
        for i in 0..10 {
            let r = admin
                .transact(&client, LOCATION, vec![put("unit/1", round * 10 + i)])
                .await
                .unwrap();
            receipts.push((r.index, r.sequence));
        }
        while seen.len() < receipts.len() {
            seen.push(subscription.next().await.unwrap());
        }
        if round < 2 {
            // Stop the location's leader: the next polls and writes go
            // elsewhere.
            let leader = servers.servers[0].as_ref().unwrap().node.leader(group);
            let i = leader.map_or(0, |l| l as usize - 1);
            servers.stop(i).await;
            servers.restart(i).await;
        }
    }
    let got: Vec<(u64, u64)> = seen
        .iter()
        .map(|e| match e.body {
            EventBody::Committed { sequence } => (e.id.index, sequence),
            _ => unreachable!("filtered"),
        })
        .collect();
    assert_eq!(got, receipts, "every commit once, in log order");
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_named_consumer_resumes_after_its_saved_cursor_across_a_restart() {
    let mut servers = Servers::start(3, "events-consumer").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut admin = Player::new(admin_key());
    for i in 0..6 {
        admin
            .transact(&client, LOCATION, vec![put("unit/1", i)])
            .await
            .unwrap();
    }
    let events = read_all(&client, 12).await;
    let saved = events[5].id.cursor();
    client.save_cursor(LOCATION, "stats", saved).await.unwrap();
    assert_eq!(client.load_cursor(LOCATION, "other").await.unwrap(), None);
    // Another player's consumer of the same name is another consumer.
    let stranger = servers
        .pinned_client_as(0, &garrison_client::Keypair::from_seed([6; 32]))
        .await;
    assert_eq!(stranger.load_cursor(LOCATION, "stats").await.unwrap(), None);
    for i in 0..3 {
        servers.stop(i).await;
    }
    for i in 0..3 {
        servers.restart(i).await;
    }
    let client = servers.client().await;
    let resumed = client.load_cursor(LOCATION, "stats").await.unwrap();
    assert_eq!(resumed, Some(saved));
    let mut subscription = client.subscribe(
        vec![(LOCATION.into(), StartAt::After(saved))],
        EventFilter::default(),
    );
    let mut rest = Vec::new();
    while rest.len() < events.len() - 6 {
        rest.push(subscription.next().await.unwrap());
    }
    assert_eq!(rest, events[6..], "exactly the events after the saved one");
    // Bad names and cursors past the log are refused.
    let bad = client.save_cursor(LOCATION, "no spaces", saved).await;
    assert!(
        matches!(bad, Err(ClientError::Api(ApiError::InvalidRequest(_)))),
        "{bad:?}"
    );
    let future = client
        .save_cursor(LOCATION, "stats", Cursor::end_of(1_000_000))
        .await;
    assert!(
        matches!(&future, Err(ClientError::Api(ApiError::InvalidRequest(m))) if m.contains("past")),
        "{future:?}"
    );
    assert_eq!(
        client.load_cursor(LOCATION, "stats").await.unwrap(),
        Some(saved)
    );
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_behind_retention_is_told_the_oldest_event_held() {
    let servers = Servers::start_edited(3, "events-trimmed", |c| {
        c.events.max_retained_events = 8;
    })
    .await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let mut admin = Player::new(admin_key());
    for i in 0..10 {
        admin
            .transact(&client, LOCATION, vec![put("unit/1", i)])
            .await
            .unwrap();
    }
    match client.read_events(&all_after(Cursor::START)).await {
        Err(ClientError::Api(ApiError::EventsTrimmed {
            location,
            after,
            oldest: Some(oldest),
            resume_after,
        })) => {
            assert!(resume_after < oldest);
            assert_eq!((location.as_str(), after), (LOCATION, Cursor::START));
            let oldest_first = EventQuery {
                locations: vec![(LOCATION.into(), StartAt::Oldest)],
                ..all_after(Cursor::START)
            };
            let batch = client.read_events(&oldest_first).await.unwrap();
            assert_eq!(batch.events.len(), 8, "the retained events");
            assert_eq!(batch.events[0].id.cursor(), oldest);
            // A subscription told of the loss goes on after it once asked.
            let mut subscription = client.subscribe(
                vec![(LOCATION.into(), StartAt::After(Cursor::START))],
                EventFilter::default(),
            );
            let lost = subscription.next().await.unwrap_err();
            assert!(subscription.skip_trimmed(&lost), "{lost:?}");
            let first = subscription.next().await.unwrap();
            assert_eq!(first.id.cursor(), oldest);
        }
        other => panic!("expected EventsTrimmed, got {other:?}"),
    }
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_long_poll_answers_when_an_event_is_applied_and_honours_its_filter() {
    let servers = Servers::start(3, "events-poll").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let poller = servers.pinned_client(1).await;
    let query = EventQuery {
        locations: vec![(LOCATION.into(), StartAt::Latest)],
        filter: EventFilter {
            emitted: vec!["unit_*".into()],
            ..Default::default()
        },
        max_events: 10,
        wait_ms: MAX_EVENT_WAIT_MS,
        linger_ms: 0,
    };
    let poll = tokio::spawn(async move { poller.read_events(&query).await });
    let mut admin = Player::new(admin_key());
    // Not matching: the poll keeps waiting.
    admin
        .transact(&client, LOCATION, vec![put("unit/1", 1), emit("attack", 1)])
        .await
        .unwrap();
    let r = admin
        .transact(&client, LOCATION, vec![emit("unit_lost", 7)])
        .await
        .unwrap();
    let batch = tokio::time::timeout(WAIT, poll)
        .await
        .expect("the poll answered")
        .unwrap()
        .unwrap();
    assert_eq!(batch.events.len(), 1, "{:?}", batch.events);
    assert_eq!(batch.events[0].id.index, r.index);
    assert!(
        matches!(&batch.events[0].body, EventBody::Emitted { kind, .. } if kind == "unit_lost")
    );
    assert!(batch.cursor(LOCATION).unwrap() >= batch.events[0].id.cursor());
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_limit_of_an_event_read_is_refused_with_what_was_wrong() {
    let servers = Servers::start_with(
        3,
        "events-limits",
        garrison::server::ApiLimits {
            max_event_polls_per_connection: 2,
            ..Default::default()
        },
        Default::default(),
    )
    .await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let invalid = |q: EventQuery, needle: &'static str| {
        let client = &client;
        async move {
            match client.read_events(&q).await {
                Err(ClientError::Api(ApiError::InvalidRequest(m))) => {
                    assert!(m.contains(needle), "{m:?} should mention {needle:?}")
                }
                other => panic!("expected InvalidRequest({needle}), got {other:?}"),
            }
        }
    };
    let base = all_after(Cursor::START);
    invalid(
        EventQuery {
            max_events: 0,
            ..base.clone()
        },
        "max_events",
    )
    .await;
    invalid(
        EventQuery {
            max_events: MAX_EVENTS_PER_READ + 1,
            ..base.clone()
        },
        "max_events",
    )
    .await;
    invalid(
        EventQuery {
            wait_ms: MAX_EVENT_WAIT_MS + 1,
            ..base.clone()
        },
        "wait_ms",
    )
    .await;
    invalid(
        EventQuery {
            locations: vec![],
            ..base.clone()
        },
        "locations",
    )
    .await;
    invalid(
        EventQuery {
            linger_ms: garrison_client::events::MAX_EVENT_LINGER_MS + 1,
            ..base.clone()
        },
        "linger_ms",
    )
    .await;
    invalid(
        EventQuery {
            locations: (0..=MAX_LOCATIONS_PER_EVENT_READ)
                .map(|i| (format!("l{i}"), StartAt::Latest))
                .collect(),
            ..base.clone()
        },
        "locations",
    )
    .await;
    invalid(
        EventQuery {
            locations: vec![(LOCATION.into(), StartAt::Latest); 2],
            ..base.clone()
        },
        "twice",
    )
    .await;
    invalid(
        EventQuery {
            filter: EventFilter {
                players: vec![[1; 32]; MAX_FILTER_TERMS + 1],
                ..Default::default()
            },
            ..base.clone()
        },
        "players",
    )
    .await;
    invalid(
        EventQuery {
            locations: vec![("@cluster".into(), StartAt::Latest)],
            ..base.clone()
        },
        "@cluster",
    )
    .await;
    let unknown = client
        .read_events(&EventQuery {
            locations: vec![("nowhere".into(), StartAt::Latest)],
            ..base.clone()
        })
        .await;
    assert!(
        matches!(unknown, Err(ClientError::Api(ApiError::UnknownLocation(_)))),
        "{unknown:?}"
    );
    // Two polls may wait on one connection; a third is refused at once.
    let pinned = std::sync::Arc::new(servers.pinned_client(0).await);
    let waiting = EventQuery {
        locations: vec![(LOCATION.into(), StartAt::Latest)],
        wait_ms: 20_000,
        ..base.clone()
    };
    let mut polls = Vec::new();
    for _ in 0..2 {
        let (c, q) = (pinned.clone(), waiting.clone());
        polls.push(tokio::spawn(async move { c.read_events(&q).await }));
    }
    let addr = servers.endpoints[0].clone();
    eventually("both polls wait on node 0", || {
        let (pinned, addr) = (pinned.clone(), addr.clone());
        async move {
            let status = pinned.status_of(&addr).await.unwrap();
            status.events.waiting_polls == 2
        }
    })
    .await;
    let third = pinned.read_events_at(&addr, &waiting).await;
    assert!(
        matches!(&third, Err(ClientError::Api(ApiError::RateLimited { what, .. })) if what.contains("connection")),
        "{third:?}"
    );
    let mut admin = Player::new(admin_key());
    admin
        .transact(&client, LOCATION, vec![put("unit/1", 1)])
        .await
        .unwrap();
    for p in polls {
        let batch = tokio::time::timeout(WAIT, p)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(!batch.events.is_empty());
    }
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_observer_never_blocks_apply_and_is_told_when_it_lost_its_place() {
    let servers = Servers::start_edited(3, "events-observe", |c| {
        c.events.max_retained_events = 20;
    })
    .await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let server = servers.server(0);
    let mut admin = Player::new(admin_key());
    // The location has events before the observers register: they start
    // after them (a location first seen later starts at its oldest event).
    let r = admin
        .transact(&client, LOCATION, vec![put("unit/0", 0)])
        .await
        .unwrap();
    let group = common::group_of(&client, LOCATION).await;
    server
        .node
        .wait_applied(group, r.index, WAIT)
        .await
        .unwrap();
    let mut prompt = server
        .hub
        .add_observer(server.node.clone(), EventFilter::default());
    let mut slow = server
        .hub
        .add_observer(server.node.clone(), EventFilter::default());
    assert_eq!(server.hub.observer_count(), 2);
    let mut last = 0;
    for i in 0..30 {
        // Two events each (changed/created, committed): 60 in all, more
        // than the 20 retained. `slow` reads nothing meanwhile.
        last = admin
            .transact(&client, LOCATION, vec![put("unit/1", i)])
            .await
            .unwrap()
            .index;
        if i < 5 {
            // `prompt` keeps up for a while.
            for _ in 0..2 {
                let notice = tokio::time::timeout(WAIT, prompt.next()).await.unwrap();
                assert!(matches!(
                    notice,
                    Some(garrison::events::observers::Notice::Event(_))
                ));
            }
        }
    }
    // Apply went on: the slow observer lost its place, is told so, and
    // then gets the retained events in order.
    use garrison::events::observers::Notice;
    let first = tokio::time::timeout(WAIT, slow.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first, Notice::Lost { .. }), "{first:?}");
    let Notice::Lost { resumed_after, .. } = first else {
        unreachable!()
    };
    let mut ids = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, slow.next())
            .await
            .unwrap()
            .unwrap()
        {
            Notice::Event(e) => {
                ids.push(e.id.cursor());
                if e.id.index >= last && is_outcome(&e) {
                    break;
                }
            }
            lost => panic!("lost twice: {lost:?}"),
        }
    }
    assert!(ids[0] > resumed_after, "{ids:?} after {resumed_after}");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in order, once: {ids:?}"
    );
    drop(slow);
    assert_eq!(server.hub.observer_count(), 1);
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_batch_still_fixes_where_every_other_location_starts() {
    let servers = Servers::start(3, "events-full").await;
    let client = servers.client().await;
    servers.create_location(&client, "east").await;
    servers.create_location(&client, "west").await;
    let mut admin = Player::new(admin_key());
    for i in 0..3 {
        admin
            .transact(&client, "east", vec![put("unit/1", i)])
            .await
            .unwrap();
    }
    // East has events to fill every batch; west starts at its latest.
    let mut subscription = client.subscribe(
        vec![
            ("east".into(), StartAt::After(Cursor::START)),
            ("west".into(), StartAt::Latest),
        ],
        EventFilter::default(),
    );
    subscription.max_events = 1;
    subscription.wait_ms = 200;
    subscription.poll().await.unwrap();
    // Written after the first poll: the subscription must see them, though
    // that poll returned east's events only.
    let r = admin
        .transact(&client, "west", vec![put("unit/1", 9)])
        .await
        .unwrap();
    let mut west = Vec::new();
    let started = std::time::Instant::now();
    while west.len() < 2 {
        assert!(
            started.elapsed() < WAIT,
            "west's events never came: {west:?}"
        );
        match subscription.next_buffered() {
            Some(e) if e.id.location == "west" => west.push(e.id.cursor()),
            Some(_) => {}
            None => {
                subscription.poll().await.unwrap();
            }
        }
    }
    assert_eq!(
        west,
        [
            Cursor {
                index: r.index,
                position: 0
            },
            Cursor {
                index: r.index,
                position: 1
            }
        ]
    );
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_of_several_locations_fits_in_one_frame_and_loses_nothing() {
    let servers = Servers::start(3, "events-bytes").await;
    let client = servers.client().await;
    let mut admin = Player::new(admin_key());
    let big = |i: usize| Op::Put {
        entity: format!("unit/{i}"),
        fields: (0..3)
            .map(|f| (format!("f{f}"), Value::Str("x".repeat(4000))))
            .collect(),
    };
    // About 12 KiB an event: more than 512 KiB in each location, more
    // than the client port's 1 MiB frame in the two together.
    for location in ["north", "south"] {
        servers.create_location(&client, location).await;
        for i in 0..50 {
            admin
                .transact(&client, location, vec![big(i)])
                .await
                .unwrap();
        }
    }
    let query = EventQuery {
        locations: vec![
            ("north".into(), StartAt::After(Cursor::START)),
            ("south".into(), StartAt::After(Cursor::START)),
        ],
        filter: EventFilter::default(),
        max_events: MAX_EVENTS_PER_READ,
        wait_ms: 0,
        linger_ms: 0,
    };
    let batch = client.read_events(&query).await.expect("one frame");
    assert!(!batch.events.is_empty() && batch.events.len() < 200);
    let mut subscription = client.subscribe(query.locations.clone(), EventFilter::default());
    let mut created = 0;
    while created < 100 {
        let e = tokio::time::timeout(WAIT, subscription.next())
            .await
            .unwrap()
            .unwrap();
        if e.body.event_type() == EventType::Created {
            created += 1;
        }
    }
    // A cursor past the log is refused, not waited for.
    let past = client
        .read_events(&EventQuery {
            locations: vec![("north".into(), StartAt::After(Cursor::end_of(1 << 40)))],
            ..query.clone()
        })
        .await;
    assert!(
        matches!(&past, Err(ClientError::Api(ApiError::InvalidRequest(m))) if m.contains("past")),
        "{past:?}"
    );
    servers.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lingering_poll_waits_for_more_events_before_it_answers() {
    let servers = Servers::start(3, "events-linger").await;
    let client = servers.client().await;
    servers.create_location(&client, LOCATION).await;
    let poller = servers.pinned_client(1).await;
    let lingering = EventQuery {
        locations: vec![(LOCATION.into(), StartAt::Latest)],
        filter: EventFilter {
            types: vec![EventType::Committed],
            ..Default::default()
        },
        max_events: 3,
        wait_ms: MAX_EVENT_WAIT_MS,
        linger_ms: garrison_client::events::MAX_EVENT_LINGER_MS,
    };
    // Resolve the start first, so the poll below waits for new events.
    let first = poller
        .read_events(&EventQuery {
            wait_ms: 0,
            ..lingering.clone()
        })
        .await
        .unwrap();
    let query = EventQuery {
        locations: vec![(
            LOCATION.into(),
            StartAt::After(first.cursor(LOCATION).unwrap()),
        )],
        ..lingering
    };
    let poll = tokio::spawn(async move { poller.read_events(&query).await });
    let mut admin = Player::new(admin_key());
    let started = std::time::Instant::now();
    for i in 0..3 {
        admin
            .transact(&client, LOCATION, vec![put("unit/1", i)])
            .await
            .unwrap();
    }
    // Three commits written one after the other, acknowledged each before
    // the next: a poll that answered at the first would hold one. A poll
    // that lingers holds all three, unless the machine took longer than
    // the linger to write them (then it may answer with fewer, and only
    // then).
    let batch = tokio::time::timeout(WAIT, poll)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let linger = std::time::Duration::from_millis(garrison_client::events::MAX_EVENT_LINGER_MS);
    assert!(
        batch.events.len() == 3 || (!batch.events.is_empty() && started.elapsed() >= linger),
        "{} events after {:?}",
        batch.events.len(),
        started.elapsed()
    );
    servers.shutdown().await;
}
