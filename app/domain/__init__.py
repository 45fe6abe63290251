"""One package per concept of the domain; each has models, schemas, service and router."""
