"""Analysis: cells collected into tables, statistics, the cost from measured cells, figures and the HTML report (report stage)."""
