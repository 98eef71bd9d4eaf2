#!/bin/sh
# Prints one JSON object on stdout (for `json_output: true`).
echo '{"greeting": "hello", "count": 2, "nothing": null}'
