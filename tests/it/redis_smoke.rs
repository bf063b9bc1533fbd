//! Redis (the Lua `kv` module's only backend) answers set/get/expire as the module expects.

use std::time::Duration;

use redis::AsyncCommands;

use crate::helpers::{redis_url, unique, wait_for};

async fn connection() -> redis::aio::MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("redis url");
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|_| panic!("Redis at {url} did not answer within 5 s"))
    .unwrap_or_else(|error| {
        panic!("Redis is not reachable at {url} ({error}); run the suite through ./scripts/test")
    })
}

#[tokio::test]
async fn set_get_and_expiry_round_trip() {
    let mut redis = connection().await;
    let key = unique("kv:smoke:token");

    let () = redis.set(&key, "abc").await.unwrap();
    let value: Option<String> = redis.get(&key).await.unwrap();
    assert_eq!(value.as_deref(), Some("abc"));

    let () = redis.pexpire(&key, 200).await.unwrap();
    let ttl: i64 = redis.pttl(&key).await.unwrap();
    assert!((1..=200).contains(&ttl), "pttl {ttl}");
    wait_for("the key to expire", Duration::from_secs(5), || {
        let mut redis = redis.clone();
        let key = key.clone();
        async move {
            let value: Option<String> = redis.get(&key).await.unwrap();
            value.is_none().then_some(())
        }
    })
    .await;

    let () = redis.set(&key, "gone").await.unwrap();
    let removed: i64 = redis.del(&key).await.unwrap();
    assert_eq!(removed, 1);
}
