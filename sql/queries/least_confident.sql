-- The $limit least confident images of each label, latest version of $label_set.
-- meter-batch query STORE --named least_confident --param label_set=meter-type --param limit=5
SELECT label, image_id, path, prob, margin
FROM (
    SELECT
        p.label, p.image_id, i.path, p.prob, p.margin,
        row_number() OVER (PARTITION BY p.label ORDER BY p.prob, p.image_id) AS rank
    FROM latest_predictions AS p
    JOIN images AS i USING (image_id)
    WHERE p.label_set = $label_set
)
WHERE rank <= CAST($limit AS BIGINT)
ORDER BY label, rank;
