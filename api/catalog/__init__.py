"""The shop's product catalog (商品知识): SKUs with their attributes, and the conversation skill that
answers spec questions about the product a customer is looking at."""
