-- wrk script: POST one webhook per request to /webhooks/bench/enqueue.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"endpoint": "https://receiver.example/hook", "payload": {"event": "order.created", "id": 123456789, "amount": 19.90}}'
