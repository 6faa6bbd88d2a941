-- latest_predictions: per label-set name, only its most recently created version,
-- and only for images that are live.
CREATE OR REPLACE VIEW latest_predictions AS
SELECT p.*
FROM predictions AS p
JOIN (
    SELECT name, arg_max(version, created_at) AS version
    FROM label_sets
    GROUP BY name
) AS latest ON p.label_set_version = latest.version
WHERE p.image_id IN (SELECT image_id FROM images);
