//! The seed's OAuth example end to end: token fetched over HTTP once, cached in the real Redis,
//! reused by later webhooks, and refreshed when a retry says the token was rejected.

use crate::helpers::lua::{Webhook, body, engine_settings, redis_kv, test_lua_config};
use crate::helpers::receiver::TestReceiver;
use crate::helpers::{redis_url, unique};
use howk_processor::lua::PreviousError;

const SCRIPT: &str = r#"
local json = require("json")
local http = require("http")

-- A retry after 401: the cached token was rejected; drop it and fetch a new one.
if previous_error and previous_error.status_code == 401 then
    kv.del(config_key)
end

local token = kv.get(config_key)
if not token then
    log.info("Token not cached, fetching from auth service")
    local resp, err = http.get(TOKEN_URL, {Authorization = "Basic Y2xpZW50OnNlY3JldA=="}, {cache_ttl = 60})
    if err then
        error("Token fetch failed: " .. err)
    end
    if resp.status_code ~= 200 then
        error("Auth failed with status " .. resp.status_code)
    end
    local data = json.decode(resp.body)
    token = data.access_token
    kv.set(config_key, token, data.expires_in - 60)
end

headers["Authorization"] = "Bearer " .. token
request.body = token
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_fetched_once_cached_reused_and_refreshed_after_a_401() {
    let receiver = TestReceiver::start().await;
    let settings = engine_settings(&test_lua_config(), redis_kv(&redis_url()));
    let script = SCRIPT
        .replace("TOKEN_URL", &format!("{:?}", receiver.url("/token")))
        .replace("config_key", &format!("{:?}", unique("oauth:access_token")));
    let webhook = Webhook::for_config("partner:7");

    assert_eq!(body(&settings, &script, &webhook).await, "T1");
    assert_eq!(body(&settings, &script, &webhook).await, "T1");
    assert_eq!(
        receiver.hits("/token"),
        1,
        "second webhook reuses the cached token"
    );

    let retry = Webhook {
        attempt: 1,
        previous_error: Some(PreviousError {
            status_code: Some(401),
            error: "HTTP 401".into(),
            attempt: 0,
        }),
        ..webhook.clone()
    };
    assert_eq!(body(&settings, &script, &retry).await, "T2");
    assert_eq!(receiver.hits("/token"), 2);
    assert_eq!(body(&settings, &script, &webhook).await, "T2");
}
