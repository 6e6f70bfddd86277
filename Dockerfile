# The churnwatch services image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY services ./services
COPY schemas ./schemas
COPY deploy ./deploy
RUN pip install --no-cache-dir -e .
