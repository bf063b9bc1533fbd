-- wrk script: POST a batch of 100 webhooks per request to /webhooks/bench/enqueue/batch.
local item = '{"endpoint": "https://receiver.example/hook", "payload": {"event": "order.created", "id": 123456789, "amount": 19.90}}'
local items = {}
for i = 1, 100 do items[i] = item end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"webhooks": [' .. table.concat(items, ",") .. ']}'
