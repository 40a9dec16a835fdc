"""twisted.web resources: upload, download, pages; ``make_site`` builds the tree."""
