-- Which of these paths are known cached failures.
select path from failedpaths where path = any($1::text[])
