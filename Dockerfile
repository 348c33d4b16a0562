# The mlmon image used by docker-compose.yml (worker and demo producer).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
RUN pip install --no-cache-dir .
COPY rules ./rules
COPY docker/mlmon.yaml /etc/mlmon/config.yaml
COPY docker/rules.yaml /etc/mlmon/rules.yaml
ENTRYPOINT ["mlmon"]
CMD ["demo"]
