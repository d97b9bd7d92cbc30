SELECT s.segment, COUNT(DISTINCT s.user) AS overlap, SUM(c.converted) AS conversions
FROM segments s
JOIN conversions c ON s.user = c.user
GROUP BY s.segment
