"""A tiny Django project served by gunicorn and uvicorn in tests/test_deploy.py."""
