-- Bounds the rest of the transaction's statements (a history search) to $1 ('10000ms'), as
-- Hydra's web search does: a text that matches little walks many builds.
select set_config('statement_timeout', $1::text, true)
