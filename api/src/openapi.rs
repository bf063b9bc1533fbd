//! The OpenAPI 3 document, generated from the handlers' annotations and types, served at
//! `GET /openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::routes::{health, incoming, replays, scripts, stats, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(title = "howk", description = "Webhook delivery engine: REST ingress and queries (SPEC §3)."),
    paths(
        webhooks::enqueue,
        webhooks::enqueue_batch,
        webhooks::status,
        incoming::incoming,
        scripts::put_script,
        scripts::get_script,
        scripts::delete_script,
        scripts::test_script,
        replays::start,
        replays::status,
        replays::cancel,
        stats::stats,
        health::health,
        health::ready,
        health::metrics,
    ),
    components(schemas(ErrorBody)),
    modifiers(&AdminToken),
)]
pub struct ApiDoc;

/// Every error body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: String,
}

struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
