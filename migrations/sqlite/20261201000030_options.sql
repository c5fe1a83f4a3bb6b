-- The extra pjsip options (spec `options`) of each applied extension, as `type.name=value` joined by `;`
-- (values never hold a `;`). Rows applied before this migration had none.
ALTER TABLE extensions ADD COLUMN options TEXT NOT NULL DEFAULT '';
