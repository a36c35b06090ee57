-- batuta Store schema, version 7: lease tokens wrap instead of overflowing.
--
-- A lease token is nextval(tokens) times 2^20 plus hint bits (see
-- tokenLinkBit in store_complete.go). From 2^43 on that product leaves
-- bigint: every claim and every step would fail with "bigint out of range"
-- until someone reset the sequence by hand. At 100,000 claims a second
-- that is 2.8 years away; the sequence now wraps to 1 at 2^43 - 1 instead.
--
-- A token only has to differ from the tokens the same task held before
-- (fencing compares a task's token for equality, nothing orders tokens),
-- so a value reused 2^43 claims later is harmless.
--
-- A sequence already past that point (builds before the tenth session
-- multiplied by 2^18 or 2^19, and could go further) starts again at 1, as
-- it would have wrapped.
SELECT setval('tokens', 1, false) WHERE (SELECT last_value FROM tokens) > 8796093022207;
ALTER SEQUENCE tokens MAXVALUE 8796093022207 CYCLE;
