//! No leakage between executions on a pooled engine: each one gets fresh globals, whoever ran
//! before, tenant or not.

use howk_processor::lua::Script;

use crate::helpers::*;

#[test]
fn thousand_alternating_executions_of_two_tenants_never_share_globals() {
    let mut engine = engine();
    let tenant_a = Script::new(
        "request.body = tostring(secret_b) .. '|' .. tostring(counter) \
         secret_a = 'a-secret' counter = (counter or 0) + 1 string_cache = string",
        None,
    );
    let tenant_b = Script::new(
        "request.body = tostring(secret_a) .. '|' .. tostring(counter) \
         secret_b = 'b-secret' counter = (counter or 0) + 1",
        None,
    );
    let webhook_a = Webhook {
        config_id: "alpha:1".into(),
        ..Webhook::default()
    };
    let webhook_b = Webhook {
        config_id: "beta:1".into(),
        ..Webhook::default()
    };
    for i in 0..1000 {
        let (script, webhook) = if i % 2 == 0 {
            (&tenant_a, &webhook_a)
        } else {
            (&tenant_b, &webhook_b)
        };
        let request = engine.execute(script, &webhook.input()).unwrap();
        assert_eq!(request.body.unwrap(), b"nil|nil", "execution {i}");
    }
}

#[test]
fn a_failed_execution_leaves_nothing_behind() {
    let mut engine = engine();
    let webhook = Webhook::default();
    let _ = run_on(
        &mut engine,
        "leaked = 'x' error('fail after setting')",
        &webhook,
    );
    let request = run_on(&mut engine, "request.body = tostring(leaked)", &webhook).unwrap();
    assert_eq!(request.body.unwrap(), b"nil");
}

#[test]
fn input_tables_are_fresh_each_time() {
    let mut engine = engine();
    let webhook = Webhook::default();
    run_on(
        &mut engine,
        "headers['X-Leak'] = 'x' metadata.extra = 'y' config.z = 1 request.headers['X-R'] = 'r'",
        &webhook,
    )
    .unwrap();
    let request = run_on(
        &mut engine,
        "request.body = tostring(metadata.extra) .. tostring(config.z)",
        &webhook,
    )
    .unwrap();
    assert_eq!(request.body.as_deref(), Some(&b"nilnil"[..]));
    assert_eq!(header(&request, "X-Leak"), None);
    assert_eq!(header(&request, "X-R"), None);
}

#[test]
fn same_script_for_two_tenants_sees_each_tenants_own_input() {
    let mut engine = engine();
    let script = Script::new("request.body = metadata.config_id", None);
    for config_id in ["a:1", "b:2", "a:1"] {
        let webhook = Webhook {
            config_id: config_id.into(),
            ..Webhook::default()
        };
        let request = engine.execute(&script, &webhook.input()).unwrap();
        assert_eq!(request.body.unwrap(), config_id.as_bytes());
    }
}
