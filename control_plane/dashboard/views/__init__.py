"""The dashboard's pages, one module per part of the product; each lists its `PAGES`."""
