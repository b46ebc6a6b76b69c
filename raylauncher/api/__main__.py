"""`python -m raylauncher.api > docs/openapi.json`: print the API's OpenAPI document."""

from raylauncher.api.openapi import openapi_json

print(openapi_json())
