-- The profile (nat | lan | webrtc) and the aor's qualify_frequency of each applied extension.
-- Rows applied before this migration were nat (the only behaviour there was); their
-- qualify frequency is taken from the plan's field map they were stored with.
ALTER TABLE extensions ADD COLUMN profile TEXT NOT NULL DEFAULT 'nat';
ALTER TABLE extensions ADD COLUMN qualify_frequency BIGINT NOT NULL DEFAULT 60;
UPDATE extensions SET qualify_frequency = (fields ->> 'qualifyFrequency')::BIGINT
    WHERE fields ? 'qualifyFrequency';
